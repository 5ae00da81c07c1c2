//! comm-ipc's `metadata_update` messages: a channel's listeners (its
//! clients that opened it) hear when another client joins or leaves it,
//! provides an event there or adds a subscription, as comm-ipc's server
//! tells them. Only comm-ipc clients of this listener are told and told
//! of; busline members' comings and goings are not announced.

use std::collections::HashMap;

use rmpv::Value;
use tokio::sync::mpsc;

use super::{frame::Msg, session::Session, Registry};

/// The comm-ipc clients of one channel.
#[derive(Default)]
pub(super) struct Room {
    /// Every client that registered there, first first.
    members: Vec<String>,
    /// The queues of those that opened it, who hear what changes (weak:
    /// a room never keeps a connection's writer alive).
    listeners: HashMap<String, mpsc::WeakSender<Msg>>,
}

impl Room {
    /// Tell every listener but `except`, in order, waiting on none of
    /// them: one whose queue is full (it does not read) misses the news.
    fn announce(&self, except: &str, msg: Msg) {
        for (id, out) in &self.listeners {
            if id == except {
                continue;
            }
            let Some(out) = out.upgrade() else { continue };
            if out.try_send(msg.clone()).is_err() {
                tracing::debug!(client = %id, "a comm-ipc client missed a metadata_update");
            }
        }
    }
}

fn membership(channel: &str, client: &str, mode: &str, action: &str) -> Msg {
    Msg::new([
        ("type", Value::from("metadata_update")),
        ("channel", Value::from(channel)),
        ("name", Value::from(client)),
        ("stype", Value::from("membership")),
        ("owner", Value::from(client)),
        ("mode", Value::from(mode)),
        ("action", Value::from(action)),
    ])
}

impl Registry {
    /// `client` is in `channel` without telling anyone (it protected a
    /// channel it had not opened, as comm-ipc allows).
    pub(super) fn join_quietly(&mut self, channel: &str, client: &str) {
        let room = self.rooms.entry(channel.to_owned()).or_default();
        if !room.members.iter().any(|m| m == client) {
            room.members.push(client.to_owned());
        }
    }

    /// `client` is gone: its rooms' listeners hear that it left.
    pub(super) fn leave_rooms(&mut self, client: &str) {
        let mode = self
            .modes
            .get(client)
            .cloned()
            .unwrap_or_else(|| "client".into());
        self.rooms.retain(|channel, room| {
            room.listeners.remove(client);
            if let Some(at) = room.members.iter().position(|m| m == client) {
                room.members.remove(at);
                room.announce(client, membership(channel, client, &mode, "leave"));
            }
            !room.members.is_empty()
        });
    }
}

impl Session {
    /// This client registered on `channel` (as a listener if it opened
    /// it): the others hear that it joined, as comm-ipc's server tells
    /// them at every registration.
    pub(super) fn entered(&self, channel: &str, listening: bool) {
        let mut registry = self.shared.registry();
        let mode = registry
            .modes
            .get(&self.client_id)
            .cloned()
            .unwrap_or_else(|| "client".into());
        let room = registry.rooms.entry(channel.to_owned()).or_default();
        if !room.members.contains(&self.client_id) {
            room.members.push(self.client_id.clone());
        }
        if listening {
            room.listeners
                .insert(self.client_id.clone(), self.out.downgrade());
        }
        let joined = membership(channel, &self.client_id, &mode, "join");
        room.announce(&self.client_id, joined);
    }

    /// This client no longer hears `channel` (it was closed, or its
    /// password changed under it).
    pub(super) fn stop_hearing(&self, channel: &str) {
        if let Some(room) = self.shared.registry().rooms.get_mut(channel) {
            room.listeners.remove(&self.client_id);
        }
    }

    /// Tell `channel`'s other listeners of an event or subscription this
    /// client now offers there: `fields` after type, channel and owner.
    pub(super) fn offered<const N: usize>(&self, channel: &str, fields: [(&str, Value); N]) {
        let registry = self.shared.registry();
        let Some(room) = registry.rooms.get(channel) else {
            return;
        };
        let mut msg = Msg::new([
            ("type", Value::from("metadata_update")),
            ("channel", Value::from(channel)),
            ("owner", Value::from(self.client_id.as_str())),
        ]);
        for (key, value) in fields {
            msg.set(key, value);
        }
        room.announce(&self.client_id, msg);
    }
}
