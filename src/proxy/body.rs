//! Request bodies on their way upstream: kept whole when small enough to be
//! sent a second time, otherwise streamed.
//!
//! A body of known length up to the limit is read whole. A body of unknown
//! length (chunked) is read until it ends or passes the limit: a small one is
//! kept like any other, a large one streams on with the frames already read
//! in front ([`Prefixed`]), so nothing is lost either way. A body with
//! trailers is streamed (a kept body has no place for them).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What [`take`] made of a request body.
#[derive(Debug)]
pub enum Outgoing {
    /// The whole body, small enough to send again.
    Kept(Bytes),
    /// Too large (or with trailers): streamed, never buffered whole.
    Streamed(Prefixed),
}

/// Read `body` as far as needed to decide whether it can be kept (≤ `limit` bytes).
pub async fn take(mut body: Incoming, limit: u64) -> Result<Outgoing, hyper::Error> {
    match body.size_hint().exact() {
        Some(len) if len > limit => return Ok(Outgoing::Streamed(Prefixed::new(body))),
        Some(_) => return Ok(Outgoing::Kept(body.collect().await?.to_bytes())),
        None => {}
    }
    let mut head = VecDeque::new();
    let mut size: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let is_data = frame.is_data();
        if let Some(data) = frame.data_ref() {
            size += data.len() as u64;
        }
        head.push_back(frame);
        if size > limit || !is_data {
            return Ok(Outgoing::Streamed(Prefixed {
                head,
                rest: Some(body),
            }));
        }
    }
    let mut whole = BytesMut::with_capacity(size as usize);
    for frame in head {
        if let Ok(data) = frame.into_data() {
            whole.extend_from_slice(&data);
        }
    }
    Ok(Outgoing::Kept(whole.freeze()))
}

/// A streamed body: frames already read, then the rest of the app's body.
#[derive(Debug)]
pub struct Prefixed {
    head: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
}

impl Prefixed {
    /// The app's body, untouched.
    pub fn new(body: Incoming) -> Self {
        Prefixed {
            head: VecDeque::new(),
            rest: Some(body),
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(frame) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint);
        if self.head.is_empty() {
            return rest;
        }
        let head: u64 = self
            .head
            .iter()
            .filter_map(|frame| frame.data_ref().map(|data| data.len() as u64))
            .sum();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
