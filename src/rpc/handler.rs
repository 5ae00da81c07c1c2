//! Adapters that turn plain async functions into handler services.

use std::{
    any::type_name,
    future::Future,
    marker::PhantomData,
    task::{Context, Poll},
};

use busline_core::{Encoding, Error, Payload, Result};
use futures::{future::BoxFuture, Stream, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tower::Service;

use super::router::{Reply, Request};

/// Turn a handler's error into busline's, keeping a `busline::Error` as is.
pub(crate) fn handler_error<E>(err: E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    match err.into().downcast::<Error>() {
        Ok(ours) => *ours,
        Err(other) => Error::HandlerFailed {
            message: other.to_string(),
            kind: type_name::<E>().to_string(),
        },
    }
}

/// Answer in the caller's encoding (binary callers get CBOR).
fn answer_encoding(req: &Request) -> Encoding {
    match req.payload.encoding() {
        Encoding::Binary => Encoding::Cbor,
        other => other,
    }
}

macro_rules! fn_service {
    ($name:ident) => {
        pub(crate) struct $name<F, Args> {
            f: F,
            _args: PhantomData<fn(Args)>,
        }

        impl<F, Args> $name<F, Args> {
            pub(crate) fn new(f: F) -> Self {
                Self {
                    f,
                    _args: PhantomData,
                }
            }
        }

        impl<F: Clone, Args> Clone for $name<F, Args> {
            fn clone(&self) -> Self {
                Self::new(self.f.clone())
            }
        }
    };
}

fn_service!(UnaryFn);
fn_service!(StreamFn);

impl<F, Args, Fut, Ret, E> Service<Request> for UnaryFn<F, Args>
where
    F: Fn(Args) -> Fut,
    Args: DeserializeOwned,
    Fut: Future<Output = std::result::Result<Ret, E>> + Send + 'static,
    Ret: Serialize,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    type Response = Reply;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Reply>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let encoding = answer_encoding(&req);
        let fut = req.arguments().map(&self.f);
        Box::pin(async move {
            let out = fut?.await.map_err(handler_error)?;
            Ok(Reply::Unary(Payload::encode(encoding, &out)?))
        })
    }
}

impl<F, Args, S, T, E> Service<Request> for StreamFn<F, Args>
where
    F: Fn(Args) -> S,
    Args: DeserializeOwned,
    S: Stream<Item = std::result::Result<T, E>> + Send + 'static,
    T: Serialize,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    type Response = Reply;
    type Error = Error;
    type Future = std::future::Ready<Result<Reply>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let encoding = answer_encoding(&req);
        std::future::ready(req.arguments().map(|args| {
            let items = (self.f)(args).map(move |item| {
                item.map_err(handler_error)
                    .and_then(|t| Payload::encode(encoding, &t))
            });
            Reply::Stream(Box::pin(items))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("custom failure")]
    struct Custom;

    #[test]
    fn handler_errors_keep_their_type_or_pass_through() {
        match handler_error(Custom) {
            Error::HandlerFailed { message, kind } => {
                assert_eq!(message, "custom failure");
                assert!(kind.ends_with("Custom"), "{kind}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            handler_error(Error::Unauthorized("no".into())),
            Error::Unauthorized(_)
        ));
        assert!(matches!(
            handler_error("plain text"),
            Error::HandlerFailed { .. }
        ));
    }
}
