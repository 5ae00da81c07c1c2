//! `busline broker --listen '...?codec=comm-ipc'`: a comm-ipc listener
//! in front of the broker.

use busline::{
    comm_ipc::{in_process, CommIpcListener},
    Address, Result,
};

use super::AuthArgs;

/// Listen for comm-ipc clients at `addr`, each served by a client of the
/// broker `id` at the in-process address `inside`; with `--secret-file`,
/// its contents are comm-ipc's connection secret.
pub(super) async fn listen(
    addr: &Address,
    id: &str,
    inside: &Address,
    auth: &AuthArgs,
) -> Result<CommIpcListener> {
    let mut builder = CommIpcListener::builder().server_id(id);
    if let Some(secret) = auth.secret_bytes()? {
        builder = builder.connection_secret(secret);
    }
    builder
        .bind(&busline::any_transport(), addr, in_process(inside.clone()))
        .await
}
