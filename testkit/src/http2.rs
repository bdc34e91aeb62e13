//! HTTP/2 below gRPC, for tests that speak to the api as an attacker or a
//! non-gRPC client would: the `h2` client (which respects the server's
//! limits), and raw frames written by hand (which need not).

use bytes::{BufMut, Bytes, BytesMut};
use std::net::SocketAddr;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
};

/// An `h2` client connection, and the task driving it: aborting the task
/// closes the connection.
pub async fn connect(
    addr: SocketAddr,
) -> anyhow::Result<(h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<()>)> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(tcp)
        .await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, driver))
}

/// A gRPC request head for `path` with this `content-type` (none if `None`).
pub fn request(addr: SocketAddr, path: &str, content_type: Option<&str>) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers");
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(()).expect("a valid request head")
}

/// One gRPC length-prefixed message.
pub fn message(payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(payload.len()).expect("a small message"));
    frame.put_slice(payload);
    frame.freeze()
}

/// How a server answered one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub http_status: u16,
    /// `grpc-status` from the headers (trailers-only) or the trailers.
    pub grpc_status: Option<i32>,
}

/// Sends `request` with `body` (ending the stream) and reads the answer.
pub async fn call(
    client: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: Bytes,
) -> anyhow::Result<Answer> {
    let mut ready = client.clone().ready().await?;
    let (response, mut send) = ready.send_request(request, false)?;
    // The server may answer (and reset the stream) before the body is sent,
    // as it does for a request it refuses; its answer is what counts.
    let _ = send.send_data(body, true);
    let response = response.await?;
    let http_status = response.status().as_u16();
    let mut grpc_status = grpc_status_of(response.headers());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if let Some(trailers) = body.trailers().await? {
        grpc_status = grpc_status.or_else(|| grpc_status_of(&trailers));
    }
    Ok(Answer {
        http_status,
        grpc_status,
    })
}

/// The `grpc-status` of a header map, if it holds one.
pub fn grpc_status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// What a server sent back to a [`header_only_flood`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FloodReport {
    /// RST_STREAM frames with REFUSED_STREAM.
    pub refused: u64,
    /// Other RST_STREAM frames.
    pub reset: u64,
    /// HEADERS frames (responses).
    pub responses: u64,
    /// A GOAWAY ended the connection.
    pub goaway: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server advertised, if any.
    pub max_concurrent_streams: Option<u32>,
}

/// A connection that opened `streams` streams sending only their HEADERS,
/// ignoring the server's limits as an attacker would; it stays open (its
/// streams waiting for their bodies) until dropped.
#[derive(Debug)]
pub struct HeaderOnlyFlood {
    report: watch::Receiver<FloodReport>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl HeaderOnlyFlood {
    /// What the server answered so far.
    pub fn report(&self) -> FloodReport {
        self.report.borrow().clone()
    }
}

impl Drop for HeaderOnlyFlood {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Opens one connection to `addr` and writes `streams` HEADERS frames for
/// `path` (odd stream ids, HPACK literals without indexing, no END_STREAM),
/// as fast as the socket takes them, answering the server's SETTINGS and
/// PINGs meanwhile. Returns once everything is written.
pub async fn header_only_flood(
    addr: SocketAddr,
    path: &str,
    streams: u32,
) -> anyhow::Result<HeaderOnlyFlood> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (mut read, mut write) = tcp.into_split();
    let (report_tx, report) = watch::channel(FloodReport::default());
    // The reader never waits for the writer: it hands its answers (SETTINGS
    // ACK, PING ACK) over and goes on reading. Were it to wait while the
    // writer is blocked on a full socket, the server, blocked on flushing
    // its RST_STREAMs to a reader that no longer reads, would stop reading
    // too, and both ends would wait for ever.
    let (answers, mut to_send) = mpsc::unbounded_channel::<Vec<u8>>();

    let reader = tokio::spawn(async move {
        let mut head = [0u8; 9];
        let mut payload = Vec::new();
        loop {
            if read.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            payload.resize(len, 0);
            if read.read_exact(&mut payload).await.is_err() {
                return;
            }
            match kind {
                // SETTINGS (not an ACK): read the stream limit, acknowledge.
                0x4 if flags & 0x1 == 0 => {
                    for setting in payload.chunks_exact(6) {
                        if setting[..2] == [0, 3] {
                            let value = u32::from_be_bytes([
                                setting[2], setting[3], setting[4], setting[5],
                            ]);
                            report_tx.send_modify(|r| r.max_concurrent_streams = Some(value));
                        }
                    }
                    let _ = answers.send(frame_head(0, 0x4, 0x1, 0).to_vec());
                }
                // PING: answer it.
                0x6 if flags & 0x1 == 0 => {
                    let mut pong = frame_head(8, 0x6, 0x1, 0).to_vec();
                    pong.extend_from_slice(&payload);
                    let _ = answers.send(pong);
                }
                0x3 => {
                    let refused = payload.get(..4) == Some(&[0, 0, 0, 7]);
                    report_tx.send_modify(|r| {
                        if refused {
                            r.refused += 1;
                        } else {
                            r.reset += 1;
                        }
                    });
                }
                0x1 => report_tx.send_modify(|r| r.responses += 1),
                0x7 => {
                    report_tx.send_modify(|r| r.goaway = true);
                    return;
                }
                _ => {}
            }
        }
    });

    let block = header_block(&addr.to_string(), path);
    let (written_tx, written) = oneshot::channel();
    let writer = tokio::spawn(async move {
        let mut flood = Vec::with_capacity(64 * 1024 + 9 + block.len());
        flood.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        flood.extend_from_slice(&frame_head(0, 0x4, 0, 0));
        let length = u32::try_from(block.len()).expect("a small header block");
        for i in 0..streams {
            flood.extend_from_slice(&frame_head(length, 0x1, 0x4, 2 * i + 1));
            flood.extend_from_slice(&block);
            if flood.len() >= 64 * 1024 || i + 1 == streams {
                while let Ok(answer) = to_send.try_recv() {
                    flood.extend_from_slice(&answer);
                }
                if write.write_all(&flood).await.is_err() {
                    // The server closed the connection (GOAWAY): stop here.
                    break;
                }
                flood.clear();
            }
        }
        let _ = written_tx.send(());
        // Keep answering (and keep the connection open) until dropped.
        while let Some(answer) = to_send.recv().await {
            if write.write_all(&answer).await.is_err() {
                return;
            }
        }
    });
    written.await?;
    Ok(HeaderOnlyFlood {
        report,
        tasks: [reader, writer],
    })
}

/// A frame header: 24-bit length, type, flags, stream id.
fn frame_head(length: u32, kind: u8, flags: u8, stream: u32) -> [u8; 9] {
    let [_, a, b, c] = length.to_be_bytes();
    let [d, e, f, g] = stream.to_be_bytes();
    [a, b, c, kind, flags, d, e, f, g]
}

/// A gRPC request's header block, every field a literal without indexing
/// (so the block is the same for every stream and no HPACK state changes).
fn header_block(authority: &str, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0x00);
        push_string(&mut block, name);
        push_string(&mut block, value);
    }
    block
}

fn push_string(block: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 127, "short strings only");
    block.push(u8::try_from(s.len()).expect("checked above"));
    block.extend_from_slice(s.as_bytes());
}
