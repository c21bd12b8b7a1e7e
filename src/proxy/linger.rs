//! The app's request body, read to its end when sidekey stops reading it
//! early ([`FromApp`]): a refusal answered before the body (`400`, `404`,
//! `503`, …), or an upstream that answered an upload before taking all of
//! it. Many apps write a whole upload before they read an answer (Python's
//! `http.client`, and so `requests`); a connection closed with their bytes
//! unread makes the kernel answer those writes with a reset, and the app
//! sees a broken pipe instead of the answer. So, as nginx does (it discards
//! the body, then lingers), the rest is read and dropped — for at most
//! [`DRAIN_TIME`], pausing at most [`DRAIN_IDLE`] — and then the
//! connection serves the app's next request.
//!
//! HTTP/1 only: an HTTP/2 stream left unread is reset on its own, its
//! connection unharmed. Not when the connection closes anyway (a refused
//! framing), nor for a request waiting for `100 Continue` (its app sends the
//! body only when asked; the refusal says the connection closes, see
//! [`FromApp::wrap`]), nor for a body
//! that stalled ([`Stalls`]): that app has stopped sending, and its `408`
//! closes the connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The longest pause between two pieces of a body being drained.
const DRAIN_IDLE: Duration = Duration::from_secs(5);

/// The longest a drain goes on; the connection is closed after that.
const DRAIN_TIME: Duration = Duration::from_secs(30);

/// An app's request body that is drained if dropped before its end.
#[derive(Debug)]
pub struct FromApp {
    /// `None` once handed to the drain.
    body: Option<Incoming>,
    drains: bool,
}

impl FromApp {
    /// `request` with its body wrapped, and whether sidekey's own refusal of
    /// it must end its connection; `closes`: it ends after the answer anyway.
    ///
    /// An HTTP/1 upload waiting for `100 Continue` is not drained (its app
    /// may never send the body, and then its next request would be read as
    /// that body), so hyper closes the connection after a refusal, which
    /// must say so (RFC 9110 10.1.1). Also when the refusal came after the
    /// body was read (a small body kept for a retry): one reconnect, on an
    /// error, is cheap.
    pub fn wrap(request: Request<Incoming>, closes: bool) -> (Request<FromApp>, bool) {
        // A body-less request (most) is decided by its first test.
        let upload = !request.body().is_end_stream() && request.version() <= Version::HTTP_11;
        let expects_continue = upload && request.headers().contains_key(header::EXPECT);
        let drains = upload && !closes && !expects_continue;
        let request = request.map(|body| FromApp {
            body: Some(body),
            drains,
        });
        (request, expects_continue)
    }
}

impl Body for FromApp {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for FromApp {
    fn drop(&mut self) {
        if !self.drains {
            return;
        }
        if let Some(body) = self.body.take().filter(|body| !body.is_end_stream())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(drain(body));
        }
    }
}

/// A body that [`super::body::Idle`] tells when it stopped waiting for it.
pub trait Stalls {
    /// No bytes came for the whole `body_timeout`.
    fn stalled(&mut self) {}
}

impl Stalls for Incoming {}

impl Stalls for FromApp {
    fn stalled(&mut self) {
        self.drains = false;
    }
}

/// Read `body` to its end, or until it pauses or takes too long.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(DRAIN_IDLE, body.frame()).await {}
    })
    .await;
}
