//! How long a client connection lives, so that long-lived clients spread
//! over new api pods after a scale-out (gRPC's A9 "server-side connection
//! management"): at `api.max_connection_age_ms` tonic sends GOAWAY (calls
//! in flight finish, new ones go to a new connection), and
//! `api.max_connection_age_grace_ms` later a connection still open (a
//! WatchLikeCounts stream, a client that ignores GOAWAY) is closed here.
//! HTTP/2 keepalive pings (`api.keepalive_*`) close connections whose
//! client has gone without a word.
//!
//! The grace is enforced on the socket rather than with tonic's own
//! `max_connection_age_grace`: tonic 0.14.9 sleeps age plus grace and then
//! drops the connection, without sending GOAWAY at the age.

use likes_common::config::ApiSettings;
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The connection settings of `settings`, as the server builder takes them.
#[derive(Debug, Clone, Copy)]
pub struct Lifetime {
    /// When GOAWAY is sent; `None`: never.
    pub max_age: Option<Duration>,
    /// How long after GOAWAY a connection may stay open.
    pub grace: Duration,
    /// Interval of HTTP/2 keepalive pings; `None`: none.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
}

impl Lifetime {
    pub fn of(settings: &ApiSettings) -> Self {
        let some = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            max_age: some(settings.max_connection_age_ms),
            grace: Duration::from_millis(settings.max_connection_age_grace_ms),
            keepalive_interval: some(settings.keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(settings.keepalive_timeout_ms),
        }
    }

    /// Accepted connections, each closed at age plus grace.
    pub fn bound<S>(self, incoming: S) -> impl Stream<Item = io::Result<Aged>>
    where
        S: Stream<Item = io::Result<TcpStream>>,
    {
        let close_after = self.max_age.map(|age| age + self.grace);
        incoming.map(move |accepted| {
            accepted.map(|stream| Aged {
                stream,
                closing: close_after.map(|after| Box::pin(tokio::time::sleep(after))),
            })
        })
    }
}

/// An accepted connection that fails its reads and writes once its time is
/// up, so that hyper ends it (and the calls still on it, which their clients
/// see as UNAVAILABLE and retry or resubscribe).
#[derive(Debug)]
pub struct Aged {
    stream: TcpStream,
    closing: Option<Pin<Box<Sleep>>>,
}

impl Aged {
    /// Polls the connection's end: an error once its time is up, and in
    /// any case a wake-up registered for then.
    fn expired(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(closing) = &mut self.closing else {
            return Ok(());
        };
        if closing.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the connection outlived api.max_connection_age_ms and its grace",
        ))
    }
}

impl AsyncRead for Aged {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.expired(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Aged {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.expired(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.expired(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for Aged {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(lifetime: Lifetime) -> (Aged, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let client = TcpStream::connect(listener.local_addr().expect("bound"))
            .await
            .expect("connects");
        let accepted = listener.accept().await.expect("accepted").0;
        let mut bound = std::pin::pin!(lifetime.bound(tokio_stream::once(Ok(accepted))));
        let aged = bound.next().await.expect("one").expect("ok");
        (aged, client)
    }

    fn lifetime(max_age: Option<Duration>) -> Lifetime {
        Lifetime {
            max_age,
            grace: Duration::from_millis(200),
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn a_connection_fails_once_past_its_age_and_grace() {
        let (mut server, mut client) = pair(lifetime(Some(Duration::from_millis(300)))).await;
        let started = tokio::time::Instant::now();
        client.write_all(b"hi").await.expect("written");
        let mut buf = [0; 2];
        server.read_exact(&mut buf).await.expect("read in time");
        server.write_all(b"ok").await.expect("written in time");
        // A read waiting for bytes that never come ends at age plus grace.
        let error = server.read(&mut buf).await.expect_err("timed out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let ended = started.elapsed();
        assert!(
            ended >= Duration::from_millis(400) && ended < Duration::from_secs(3),
            "{ended:?}"
        );
        assert!(server.write_all(b"late").await.is_err());
    }

    #[tokio::test]
    async fn without_an_age_a_connection_lives_on() {
        let (mut server, mut client) = pair(lifetime(None)).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.write_all(b"hi").await.expect("written");
        let mut buf = [0; 2];
        server.read_exact(&mut buf).await.expect("still open");
    }
}
