//! The peer's calls in flight: their JSON ids, kept exactly as sent, and the
//! batches they arrived in.
//!
//! busline numbers calls with `u64`s; JSON-RPC ids are numbers, strings or
//! null. A peer's id that is a free `u64` is used as it is (logs stay
//! readable); any other id gets a number from the top half of the range,
//! and the answer goes back under the original id text.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::value::RawValue;

/// An id as it goes back out.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(untagged)]
pub(crate) enum JsonId<'a> {
    /// The peer's own number, used as busline's.
    Number(u64),
    /// Anything else, exactly as received.
    Raw(&'a RawValue),
}

/// One call the peer made that awaits its answer.
#[derive(Debug)]
struct PeerCall {
    /// The id as received, unless it is busline's number for the call.
    json_id: Option<Box<RawValue>>,
    batch: Option<u64>,
    /// The JSON-RPC code to answer with instead of the error's own (the
    /// codec's parse and request errors).
    code: Option<i64>,
}

/// One batch whose answers are being collected.
#[derive(Debug, Default)]
struct Batch {
    waiting: usize,
    answers: Vec<String>,
}

/// The answer to one call, once it is known where it goes.
#[derive(Debug)]
pub(crate) struct Route {
    id: u64,
    /// The id to answer under, unless it is `id` itself.
    json_id: Option<Box<RawValue>>,
    /// The code a rejected call's error must carry.
    pub(crate) code: Option<i64>,
    batch: Option<u64>,
}

impl Route {
    /// The id to answer under.
    pub(crate) fn json_id(&self) -> JsonId<'_> {
        match &self.json_id {
            Some(raw) => JsonId::Raw(raw),
            None => JsonId::Number(self.id),
        }
    }
}

/// Bookkeeping for one connection.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    calls: HashMap<u64, PeerCall>,
    by_json: HashMap<String, u64>,
    next_mapped: u64,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
}

const MAPPED_START: u64 = 1 << 63;

impl Calls {
    /// Register a call the peer made under `json_id`; the number busline
    /// will know it by.
    pub(crate) fn register(
        &mut self,
        json_id: &RawValue,
        batch: Option<u64>,
        code: Option<i64>,
    ) -> u64 {
        let direct = json_id
            .get()
            .parse::<u64>()
            .ok()
            .filter(|n| !self.calls.contains_key(n));
        let (id, json_id) = match direct {
            Some(n) => (n, None),
            None => {
                let id = self.fresh();
                self.by_json.insert(json_id.get().to_owned(), id);
                (id, Some(json_id.to_owned()))
            }
        };
        if let Some(b) = batch.and_then(|b| self.batches.get_mut(&b)) {
            b.waiting += 1;
        }
        self.calls.insert(
            id,
            PeerCall {
                json_id,
                batch,
                code,
            },
        );
        id
    }

    fn fresh(&mut self) -> u64 {
        loop {
            let id = self.next_mapped.max(MAPPED_START);
            self.next_mapped = id.wrapping_add(1);
            if !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// The number of the peer's call `json_id` (for its cancel and credit
    /// notifications); a bare number when no such call is known.
    pub(crate) fn lookup(&self, json_id: &str) -> Option<u64> {
        self.by_json
            .get(json_id)
            .copied()
            .or_else(|| json_id.parse().ok())
    }

    /// The JSON id of call `id`, which stays open (stream items).
    pub(crate) fn json_id(&self, id: u64) -> JsonId<'_> {
        match self.calls.get(&id).and_then(|c| c.json_id.as_deref()) {
            Some(raw) => JsonId::Raw(raw),
            None => JsonId::Number(id),
        }
    }

    /// Where the final answer to `id` goes; the call is done with. Calls
    /// the codec never saw (the conformance suite's) answer under their
    /// number.
    pub(crate) fn finish(&mut self, id: u64) -> Route {
        match self.calls.remove(&id) {
            Some(call) => {
                if let Some(json_id) = &call.json_id {
                    if self.by_json.get(json_id.get()) == Some(&id) {
                        self.by_json.remove(json_id.get());
                    }
                }
                Route {
                    id,
                    json_id: call.json_id,
                    code: call.code,
                    batch: call.batch,
                }
            }
            None => Route {
                id,
                json_id: None,
                code: None,
                batch: None,
            },
        }
    }

    /// The peer cancelled call `id`: no answer will come, so its batch
    /// stops waiting for one.
    pub(crate) fn forget(&mut self, id: u64) {
        let route = self.finish(id);
        if let Some(b) = route.batch.and_then(|b| self.batches.get_mut(&b)) {
            b.waiting = b.waiting.saturating_sub(1);
        }
    }

    /// Start collecting a batch.
    pub(crate) fn open_batch(&mut self) -> u64 {
        let b = self.next_batch;
        self.next_batch += 1;
        self.batches.insert(b, Batch::default());
        b
    }

    /// A batch has been read whole: drop it if nothing in it awaits an answer.
    pub(crate) fn close_batch(&mut self, b: u64) {
        if self.batches.get(&b).is_some_and(|b| b.waiting == 0) {
            self.batches.remove(&b);
        }
    }

    /// File `answer` (one response object) under its route; the text to
    /// send now: the answer alone, the whole batch once it is complete, or
    /// nothing while the batch still waits.
    pub(crate) fn deliver(&mut self, route: &Route, answer: String) -> Option<String> {
        let Some(b) = route.batch else {
            return Some(answer);
        };
        let batch = self.batches.get_mut(&b)?;
        batch.answers.push(answer);
        batch.waiting = batch.waiting.saturating_sub(1);
        if batch.waiting > 0 {
            return None;
        }
        let batch = self.batches.remove(&b)?;
        Some(format!("[{}]", batch.answers.join(",")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.into()).unwrap()
    }

    fn answered_as(route: Route) -> String {
        serde_json::to_string(&route.json_id()).unwrap()
    }

    #[test]
    fn ids_are_kept_and_numbers_reused_only_when_free() {
        let mut calls = Calls::default();
        assert_eq!(calls.register(&raw("7"), None, None), 7);
        let second_seven = calls.register(&raw("7"), None, None);
        assert!(second_seven >= MAPPED_START);
        let text = calls.register(&raw("\"abc\""), None, None);
        assert!(text >= MAPPED_START && text != second_seven);
        assert_eq!(calls.lookup("\"abc\""), Some(text));
        assert_eq!(answered_as(calls.finish(text)), "\"abc\"");
        assert_eq!(answered_as(calls.finish(second_seven)), "7");
        assert_eq!(answered_as(calls.finish(7)), "7");
        assert_eq!(answered_as(calls.finish(12)), "12");
    }

    #[test]
    fn a_batch_answers_once_all_its_calls_are_answered_or_cancelled() {
        let mut calls = Calls::default();
        let b = calls.open_batch();
        let one = calls.register(&raw("1"), Some(b), None);
        let two = calls.register(&raw("2"), Some(b), None);
        let three = calls.register(&raw("3"), Some(b), None);
        calls.close_batch(b);
        let r = calls.finish(two);
        assert_eq!(calls.deliver(&r, "B".into()), None);
        calls.forget(three);
        let r = calls.finish(one);
        assert_eq!(calls.deliver(&r, "A".into()).as_deref(), Some("[B,A]"));

        let empty = calls.open_batch();
        calls.close_batch(empty);
        assert!(calls.batches.is_empty());
    }
}
