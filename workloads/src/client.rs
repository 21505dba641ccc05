//! Clients for the test workloads' protocols, shared by the agent's in-process suites and
//! the end-to-end suite: each opens its own connection to `addr` (a proxy, a ClusterIP or
//! a pod) and returns what came back, or an error saying what failed.
use std::net::SocketAddr;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("connect {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed (closed, reset, malformed).
    #[error("HTTP")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("building the request")]
    Request(#[from] hyper::http::Error),
    /// The websocket handshake or exchange failed.
    #[error("websocket")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// Reading or writing the raw connection failed.
    #[error("i/o")]
    Io(#[from] std::io::Error),
    /// The peer closed before answering.
    #[error("closed before {0}")]
    Closed(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    TcpStream::connect(addr)
        .await
        .map_err(|source| Error::Connect { addr, source })
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

/// An HTTP/1.1 keep-alive connection.
pub struct Http1 {
    tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Http1 {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = connect(addr).await?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { tx })
    }

    /// `method path` with `headers` and `body`, on this connection.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "web");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.tx.ready().await?;
        let resp = self.tx.send_request(req.body(Full::new(body))?).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// `GET path` on a new connection, with an `x-trace: abc` header the workload echoes.
pub async fn get(addr: SocketAddr, path: &str) -> Result<Answer> {
    Http1::connect(addr)
        .await?
        .send("GET", path, &[("x-trace", "abc")], Bytes::new())
        .await
}

/// `POST /echo` of `len` bytes; the length of what was echoed back.
pub async fn echo_len(addr: SocketAddr, len: usize) -> Result<usize> {
    let a = Http1::connect(addr)
        .await?
        .send("POST", "/echo", &[], Bytes::from(vec![b'x'; len]))
        .await?;
    Ok(a.body.len())
}

/// One message through the workload's websocket echo.
pub async fn websocket_echo(addr: SocketAddr, message: &str) -> Result<String> {
    let stream = connect(addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream).await?;
    ws.send(message.into()).await?;
    let reply = ws
        .next()
        .await
        .ok_or(Error::Closed("a websocket frame"))??;
    Ok(reply.into_text()?.to_string())
}

/// A websocket to the workload's echo, kept open between messages (a connection that
/// stays open for as long as its user wants).
pub struct Websocket {
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
}

impl Websocket {
    /// Opens `ws://addr/path`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Self> {
        let stream = connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), stream).await?;
        Ok(Self { ws })
    }

    /// Sends `message` and returns the echo.
    pub async fn echo(&mut self, message: &str) -> Result<String> {
        self.ws.send(message.into()).await?;
        let reply = self
            .ws
            .next()
            .await
            .ok_or(Error::Closed("a websocket frame"))??;
        Ok(reply.into_text()?.to_string())
    }
}

/// gRPC over h2c: `/elasti.test.Echo/ServerStream` with `repeat` copies of "hello".
/// Whether the frames came back whole, and the `grpc-status` trailer.
pub async fn grpc_server_stream(addr: SocketAddr, repeat: usize) -> Result<(bool, Option<String>)> {
    let stream = connect(addr).await?;
    let (mut tx, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(b"hello");
    let req = Request::post("http://web/elasti.test.Echo/ServerStream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-repeat", repeat.to_string())
        .body(Full::new(Bytes::from(frame.clone())))?;
    let resp = tx.send_request(req).await?;
    let collected = resp.into_body().collect().await?;
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("").to_string());
    Ok((
        collected.to_bytes().to_vec() == frame.repeat(repeat),
        status,
    ))
}

/// The tcp-echo workload: `WHO` names the pod, anything else is echoed. Both lines.
pub async fn tcp_who_and_echo(addr: SocketAddr) -> Result<(String, String)> {
    let mut s = connect(addr).await?;
    s.write_all(b"WHO\n").await?;
    let mut r = BufReader::new(s);
    let mut who = String::new();
    r.read_line(&mut who).await?;
    r.get_mut().write_all(b"again\n").await?;
    let mut echo = String::new();
    r.read_line(&mut echo).await?;
    Ok((who, echo))
}
