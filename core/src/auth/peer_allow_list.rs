//! Admit only local peers whose user or group the operating system vouches
//! for (`SO_PEERCRED` on Unix sockets), as D-Bus does.

use async_trait::async_trait;

use super::{AuthChannel, Authenticator, Identity, NoAuth};
use crate::{Error, PeerInfo, Result};

/// Admits a connection only if its peer's uid or gid is on the list, then
/// runs `inner` (by default no further authentication; a
/// [`SharedSecret`](super::SharedSecret) to require both).
///
/// Credentials come from the transport: Unix sockets have them; a
/// transport without them (TCP) is refused, never let through.
///
/// ```
/// use busline_core::auth::PeerAllowList;
///
/// let me = PeerAllowList::new().allow_uid(1000).allow_gid(27);
/// # let _ = me;
/// ```
#[derive(Debug, Clone)]
pub struct PeerAllowList<A = NoAuth> {
    uids: Vec<u32>,
    gids: Vec<u32>,
    inner: A,
}

impl PeerAllowList<NoAuth> {
    /// An empty list (nobody is admitted until uids or gids are added).
    pub fn new() -> Self {
        Self::wrapping(NoAuth)
    }
}

impl Default for PeerAllowList<NoAuth> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> PeerAllowList<A> {
    /// An empty list that runs `inner` after the credential check.
    pub fn wrapping(inner: A) -> Self {
        PeerAllowList {
            uids: Vec::new(),
            gids: Vec::new(),
            inner,
        }
    }

    /// Admit peers running as user `uid`.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.uids.push(uid);
        self
    }

    /// Admit peers whose primary group is `gid`.
    pub fn allow_gid(mut self, gid: u32) -> Self {
        self.gids.push(gid);
        self
    }

    fn check(&self, peer: &PeerInfo) -> Result<String> {
        let Some(cred) = &peer.credentials else {
            return Err(Error::Unauthorized(format!(
                "{}: the transport gives no peer credentials, which this server requires",
                peer.description
            )));
        };
        if self.uids.contains(&cred.uid) || self.gids.contains(&cred.gid) {
            Ok(format!("uid {} gid {}", cred.uid, cred.gid))
        } else {
            Err(Error::Unauthorized(format!(
                "peer uid {} gid {} is not allowed here",
                cred.uid, cred.gid
            )))
        }
    }
}

#[async_trait]
impl<A: Authenticator> Authenticator for PeerAllowList<A> {
    fn scheme(&self) -> &'static str {
        self.inner.scheme()
    }

    async fn client(&self, channel: &mut dyn AuthChannel) -> Result<()> {
        self.inner.client(channel).await
    }

    async fn server(&self, channel: &mut dyn AuthChannel, peer: PeerInfo) -> Result<Identity> {
        let subject = self.check(&peer)?;
        let mut identity = self.inner.server(channel, peer).await?;
        identity.subject.get_or_insert(subject);
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerCredentials;

    struct Silent;

    #[async_trait]
    impl AuthChannel for Silent {
        async fn send(&mut self, _: crate::Payload) -> Result<()> {
            Ok(())
        }
        async fn recv(&mut self) -> Result<crate::Payload> {
            Err(Error::Protocol("nothing to read".into()))
        }
    }

    fn peer(cred: Option<(u32, u32)>) -> PeerInfo {
        PeerInfo {
            description: "test".into(),
            credentials: cred.map(|(uid, gid)| PeerCredentials {
                uid,
                gid,
                pid: None,
            }),
        }
    }

    #[tokio::test]
    async fn only_listed_users_or_groups_get_in() {
        let list = PeerAllowList::new().allow_uid(1000).allow_gid(50);
        let ok = list
            .server(&mut Silent, peer(Some((1000, 1))))
            .await
            .unwrap();
        assert_eq!(ok.subject.as_deref(), Some("uid 1000 gid 1"));
        assert!(list.server(&mut Silent, peer(Some((7, 50)))).await.is_ok());
        for refused in [peer(Some((7, 7))), peer(None)] {
            assert!(matches!(
                list.server(&mut Silent, refused).await,
                Err(Error::Unauthorized(_))
            ));
        }
    }
}
