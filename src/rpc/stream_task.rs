//! The task that runs one served stream, paced by the caller's credit.

use std::sync::Arc;

use busline_core::{Error, Message};
use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};

use super::{
    driver::{guarded, with_deadline, Command},
    router::{Reply, Request, Router},
};

/// Run the handler, then send one item per credit permit until the stream
/// ends, fails, or the caller's deadline passes; finish with `End` or
/// `Error`. A unary handler called as a stream yields one item.
pub(crate) async fn run(
    id: u64,
    router: Router,
    req: Request,
    credit: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Command>,
) {
    let deadline = req.deadline;
    let send = |msg, last| tx.send(Command::Send { id, msg, last }).is_ok();
    let work = async {
        let mut items = match guarded(router.dispatch(req)).await? {
            Reply::Stream(items) => items,
            Reply::Unary(payload) => Box::pin(futures::stream::once(async { Ok(payload) })),
        };
        loop {
            let Ok(permit) = credit.acquire().await else {
                return Ok(());
            };
            permit.forget();
            match guarded(async { Ok::<_, Error>(items.next().await) }).await? {
                Some(Ok(payload)) => {
                    if !send(Message::Item { id, payload }, false) {
                        return Ok(()); // the connection is gone
                    }
                }
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            }
        }
    };
    let last = match with_deadline(deadline, work).await {
        Ok(()) => Message::End { id },
        Err(err) => Message::Error {
            id,
            error: err.to_remote(),
        },
    };
    send(last, true);
}
