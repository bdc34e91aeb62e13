//! A request body on its way in: counted against the byte budget by the
//! message length it announces, and watched for stalls (see the parent).

use super::{Admission, Call, MESSAGE_PREFIX, evicted, over_budget};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tonic::{Status, body::Body};

/// Where the body stands in gRPC's length-prefixed framing.
#[derive(Debug, Default)]
pub(super) struct Framing {
    prefix: [u8; MESSAGE_PREFIX],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Framing {
    /// Walks `data`; returns the largest message length announced in it.
    fn announced(&mut self, mut data: &[u8]) -> Option<usize> {
        let mut largest = None;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (MESSAGE_PREFIX - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + n].copy_from_slice(&data[..n]);
            self.prefix_read += n;
            data = &data[n..];
            if self.prefix_read == MESSAGE_PREFIX {
                self.prefix_read = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u32::from_be_bytes([a, b, c, d]) as usize;
                self.remaining = len;
                largest = largest.max(Some(len));
            }
        }
        largest
    }
}

/// A request body, counted against the byte budget and watched for stalls.
pub(super) struct MeteredBody {
    inner: Body,
    admission: Arc<Admission>,
    /// Set for evictable calls.
    call: Option<Arc<Call>>,
    charged: usize,
    framing: Framing,
}

impl MeteredBody {
    /// `call` is set for calls that may be evicted while their body stalls.
    pub(super) fn new(inner: Body, admission: Arc<Admission>, call: Option<Arc<Call>>) -> Self {
        Self {
            inner,
            admission,
            call,
            charged: 0,
            framing: Framing::default(),
        }
    }

    /// Charges what the decoder will hold for a message of `announced`
    /// bytes (tonic refuses larger ones than `max_message` before
    /// reserving, so they count at the limit).
    fn charge(&mut self, announced: usize) -> Result<(), Status> {
        let wanted = announced.min(self.admission.max_message) + MESSAGE_PREFIX;
        if wanted <= self.charged {
            return Ok(());
        }
        if !self.admission.charge(wanted - self.charged) {
            metrics::counter!("likes_requests_refused_total", "reason" => "body_bytes")
                .increment(1);
            return Err(over_budget(self.admission.budget));
        }
        self.charged = wanted;
        Ok(())
    }

    /// The body ended: give the bytes back; the call can no longer be evicted.
    fn finish(&mut self) {
        self.admission.refund(std::mem::take(&mut self.charged));
        if let Some(call) = &self.call {
            call.received();
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        self.admission.refund(self.charged);
    }
}

impl HttpBody for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.call.as_ref().is_some_and(|c| c.is_evicted()) {
            return Poll::Ready(Some(Err(evicted(this.admission.grace))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if let Some(call) = &this.call {
                    call.waker.register(cx.waker());
                    this.admission.waiting(call);
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => {
                this.finish();
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Some(announced) = this.framing.announced(data)
                    && let Err(status) = this.charge(announced)
                {
                    this.finish();
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_finds_announced_lengths_across_frames() {
        let mut framing = Framing::default();
        // A prefix split over two frames, then its message, then another.
        assert_eq!(framing.announced(&[0, 0, 0]), None);
        assert_eq!(framing.announced(&[1, 0]), Some(256));
        assert_eq!(framing.announced(&[7; 200]), None);
        let mut rest = vec![7; 56];
        rest.extend_from_slice(&[0, 0, 0, 0, 3, 1, 2, 3]);
        assert_eq!(framing.announced(&rest), Some(3));
    }
}
