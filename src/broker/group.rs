//! Named groups of providers within a channel, as comm-ipc has them.

use std::future::Future;

use busline_core::{Error, Result};
use futures::{stream::BoxStream, Stream};
use serde::{de::DeserializeOwned, Serialize};

use super::{channel::Channel, protocol::Balance};

/// A named group of providers on a channel, from [`Channel::group`].
///
/// A group's method `m` is the channel's method `"{group}.{m}"`: the group
/// is a namespace, so that several pools of workers can each offer a
/// `resize` on one channel, and each pool shares its calls among its
/// members by its own [`Balance`] (least busy first unless one of them
/// sets round-robin). Members that do not use the group handle reach the
/// same methods by their full names.
///
/// ```no_run
/// # async fn run(channel: busline::broker::Channel) -> busline::Result<()> {
/// let thumbnails = channel.group("thumbnails")?;
/// thumbnails.provide("resize", |px: u32| async move { Ok::<_, String>(px / 2) }).await?;
/// let half: u32 = thumbnails.call("resize", &640).await?;
/// assert_eq!(half, channel.call::<_, u32>("thumbnails.resize", &640).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Group {
    channel: Channel,
    name: String,
}

impl Channel {
    /// The provider group `name` on this channel; `name` must not be empty
    /// and must not contain `.` (the separator of its methods' names).
    pub fn group(&self, name: &str) -> Result<Group> {
        if name.is_empty() || name.contains('.') {
            return Err(Error::Protocol(format!(
                "group name {name:?} must be non-empty and without '.'"
            )));
        }
        Ok(Group {
            channel: self.clone(),
            name: name.to_owned(),
        })
    }
}

impl Group {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The channel method that the group's `method` is.
    pub fn method(&self, method: &str) -> String {
        format!("{}.{method}", self.name)
    }

    /// Join the group as a provider of `method` (see [`Channel::provide`]).
    pub async fn provide<F, Args, Fut, Ret, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> Fut + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
        Ret: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.channel.provide(&self.method(method), f).await
    }

    /// Join the group as a provider of the stream `method` (see
    /// [`Channel::provide_stream`]).
    pub async fn provide_stream<F, Args, S, T, E>(&self, method: &str, f: F) -> Result<()>
    where
        F: Fn(Args) -> S + Clone + Send + Sync + 'static,
        Args: DeserializeOwned + Send + 'static,
        S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
        T: Serialize + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        self.channel.provide_stream(&self.method(method), f).await
    }

    /// Choose how the group shares the calls of `method` among its members.
    pub async fn set_balance(&self, method: &str, balance: Balance) -> Result<()> {
        self.channel
            .set_balance(&self.method(method), balance)
            .await
    }

    /// Call `method` on one member of the group.
    pub async fn call<Args: Serialize + ?Sized, Ret: DeserializeOwned>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<Ret> {
        self.channel.call(&self.method(method), args).await
    }

    /// Open a stream from one member of the group.
    pub async fn stream<Args: Serialize + ?Sized, Item: DeserializeOwned + 'static>(
        &self,
        method: &str,
        args: &Args,
    ) -> Result<BoxStream<'static, Result<Item>>> {
        self.channel.stream(&self.method(method), args).await
    }

    /// Fire and forget to one member of the group.
    pub async fn send<Args: Serialize + ?Sized>(&self, method: &str, args: &Args) -> Result<()> {
        self.channel.send(&self.method(method), args).await
    }
}
