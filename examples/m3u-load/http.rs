//! A deliberately small HTTP/1.1 client for load generation: one keep-alive connection,
//! sequential requests, bodies discarded straight out of the read buffer (or kept, for
//! playlists). It must stay cheap per request — on a 2-core box every cycle it spends is
//! taken from the proxy under test — so it parses only the headers a load tool needs
//! (status, Content-Length, Transfer-Encoding, Connection, Content-Range) and never speaks
//! TLS, HTTP/2 or redirects. It must not be used against anything but plain-HTTP loopback.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use url::Url;

/// How long a response head may take; a proxy that hangs must show up as an error, not as a
/// load tool that never ends.
const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one read of a body may stall before the request counts as failed.
const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Where requests go: resolved once, so the hot loop never touches a resolver.
#[derive(Clone, Debug)]
pub struct Origin {
    addr: SocketAddr,
    host_header: String,
}

impl Origin {
    pub fn of(url: &Url) -> Result<Origin> {
        if url.scheme() != "http" {
            bail!("only http:// URLs are supported, got {url}");
        }
        let addr = url
            .socket_addrs(|| Some(80))?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("cannot resolve {url}"))?;
        let host = url.host_str().unwrap_or("localhost");
        let host_header = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Origin { addr, host_header })
    }
}

/// What the body reader still expects on the wire.
enum Body {
    Length(u64),
    Chunked { left_in_chunk: u64 },
    UntilClose,
    Done,
}

/// The parts of a response head the load tool uses.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub content_range: Option<String>,
    pub content_length: Option<u64>,
    /// From sending the request to the status line arriving.
    pub ttfb: Duration,
}

/// One connection to one origin; reconnects lazily after errors or `Connection: close`.
pub struct Conn {
    origin: Origin,
    buf_size: usize,
    reader: Option<BufReader<TcpStream>>,
    body: Body,
    keep_alive: bool,
    line: Vec<u8>,
}

impl Conn {
    /// `buf_size` is the read buffer: bodies are discarded from it without copying, so it
    /// bounds both the memory per viewer and the bytes per read syscall.
    pub fn new(origin: Origin, buf_size: usize) -> Conn {
        Conn {
            origin,
            buf_size,
            reader: None,
            body: Body::Done,
            keep_alive: false,
            line: Vec::with_capacity(256),
        }
    }

    /// Sends `GET` (with an optional `Range` value) and reads the response head. The body
    /// must then be drained with [`Conn::read_body`] or [`Conn::finish`] before the next
    /// request.
    pub async fn send(&mut self, url: &Url, range: Option<&str>) -> Result<Head> {
        let reused = self.reader.is_some();
        match self.try_send(url, range).await {
            Ok(head) => Ok(head),
            // A keep-alive connection the server closed while idle fails before any response
            // byte; every client retries that once on a fresh connection.
            Err(err) if reused && is_stale(&err) => {
                self.reader = None;
                self.try_send(url, range).await
            }
            Err(err) => {
                self.reader = None;
                Err(err)
            }
        }
    }

    async fn try_send(&mut self, url: &Url, range: Option<&str>) -> Result<Head> {
        if !matches!(self.body, Body::Done) {
            bail!("previous response body was not drained");
        }
        if self.reader.is_none() {
            let stream = TcpStream::connect(self.origin.addr)
                .await
                .with_context(|| format!("connect {}", self.origin.addr))?;
            stream.set_nodelay(true)?;
            self.reader = Some(BufReader::with_capacity(self.buf_size, stream));
        }
        let reader = self.reader.as_mut().expect("connected above");
        let mut request = String::with_capacity(160);
        request.push_str("GET ");
        request.push_str(&url[url::Position::BeforePath..url::Position::AfterQuery]);
        request.push_str(" HTTP/1.1\r\nHost: ");
        request.push_str(&self.origin.host_header);
        request.push_str("\r\nUser-Agent: m3u-load/1\r\nAccept: */*\r\n");
        if let Some(range) = range {
            request.push_str("Range: ");
            request.push_str(range);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let sent = Instant::now();
        reader.get_mut().write_all(request.as_bytes()).await?;

        let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(reader, &mut self.line))
            .await
            .map_err(|_| anyhow!("no response head within {HEAD_TIMEOUT:?}"))??;
        let mut head = head;
        head.head.ttfb = sent.elapsed();
        self.keep_alive = head.keep_alive;
        self.body = head.body;
        Ok(head.head)
    }

    /// Consumes up to one buffer of body bytes and returns how many (0 when the body is
    /// complete). Bytes go to `keep` when given, else are dropped without a copy.
    pub async fn read_body(&mut self, keep: Option<&mut Vec<u8>>) -> Result<usize> {
        let result = self.read_body_inner(keep).await;
        if result.is_err() {
            self.reader = None;
            self.body = Body::Done;
        }
        result
    }

    async fn read_body_inner(&mut self, keep: Option<&mut Vec<u8>>) -> Result<usize> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        loop {
            let want = match self.body {
                Body::Done => return Ok(0),
                Body::Length(0) => {
                    self.complete();
                    return Ok(0);
                }
                Body::Length(n) => n,
                Body::Chunked { left_in_chunk: 0 } => {
                    let size = read_chunk_size(reader, &mut self.line).await?;
                    if size == 0 {
                        // Trailers, then the blank line that ends the message.
                        loop {
                            self.line.clear();
                            timed_read_line(reader, &mut self.line).await?;
                            if trim_crlf(&self.line).is_empty() {
                                break;
                            }
                        }
                        self.complete();
                        return Ok(0);
                    }
                    self.body = Body::Chunked {
                        left_in_chunk: size,
                    };
                    continue;
                }
                Body::Chunked { left_in_chunk } => left_in_chunk,
                Body::UntilClose => u64::MAX,
            };
            let available = tokio::time::timeout(BODY_STALL_TIMEOUT, reader.fill_buf())
                .await
                .map_err(|_| anyhow!("body stalled for {BODY_STALL_TIMEOUT:?}"))??;
            if available.is_empty() {
                if matches!(self.body, Body::UntilClose) {
                    self.body = Body::Done;
                    self.reader = None;
                    return Ok(0);
                }
                bail!("connection closed mid-body");
            }
            let n = available
                .len()
                .min(usize::try_from(want).unwrap_or(usize::MAX));
            if let Some(keep) = keep {
                keep.extend_from_slice(&available[..n]);
            }
            reader.consume(n);
            match &mut self.body {
                Body::Length(left) => *left -= n as u64,
                Body::Chunked { left_in_chunk } => {
                    *left_in_chunk -= n as u64;
                    if *left_in_chunk == 0 {
                        self.line.clear();
                        timed_read_line(reader, &mut self.line).await?;
                        if !trim_crlf(&self.line).is_empty() {
                            bail!("chunk not followed by CRLF");
                        }
                    }
                }
                Body::UntilClose | Body::Done => {}
            }
            return Ok(n);
        }
    }

    /// Drains the rest of the body, returning its size.
    pub async fn finish(&mut self, mut keep: Option<&mut Vec<u8>>) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self.read_body(keep.as_deref_mut()).await?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Forgets the connection (a body that will not be drained, or the end of a run).
    pub fn reset(&mut self) {
        self.reader = None;
        self.body = Body::Done;
    }

    fn complete(&mut self) {
        self.body = Body::Done;
        if !self.keep_alive {
            self.reader = None;
        }
    }
}

struct ParsedHead {
    head: Head,
    body: Body,
    keep_alive: bool,
}

async fn read_head(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<ParsedHead> {
    line.clear();
    let n = reader.read_until(b'\n', line).await?;
    if n == 0 {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    let status_line = std::str::from_utf8(trim_crlf(line)).context("status line")?;
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = None;
    let mut chunked = false;
    let mut content_range = None;
    loop {
        line.clear();
        if reader.read_until(b'\n', line).await? == 0 {
            bail!("connection closed inside the response head");
        }
        let header = trim_crlf(line);
        if header.is_empty() {
            break;
        }
        let Some(colon) = header.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &header[..colon];
        let value = std::str::from_utf8(&header[colon + 1..])
            .unwrap_or_default()
            .trim();
        if name.eq_ignore_ascii_case(b"content-length") {
            content_length = Some(value.parse::<u64>().context("Content-Length")?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                keep_alive = false;
            } else if value.contains("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case(b"content-range") {
            content_range = Some(value.to_string());
        }
    }
    // 1xx, 204 and 304 carry no body whatever the headers say (a load tool sends no HEAD).
    let body = if status < 200 || status == 204 || status == 304 {
        Body::Length(0)
    } else if chunked {
        Body::Chunked { left_in_chunk: 0 }
    } else if let Some(n) = content_length {
        Body::Length(n)
    } else {
        keep_alive = false;
        Body::UntilClose
    };
    Ok(ParsedHead {
        head: Head {
            status,
            content_range,
            content_length,
            ttfb: Duration::ZERO,
        },
        body,
        keep_alive,
    })
}

async fn read_chunk_size(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<u64> {
    line.clear();
    timed_read_line(reader, line).await?;
    let text = std::str::from_utf8(trim_crlf(line)).context("chunk size")?;
    let hex = text.split(';').next().unwrap_or_default().trim();
    u64::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {text:?}"))
}

async fn timed_read_line(reader: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> Result<()> {
    let n = tokio::time::timeout(BODY_STALL_TIMEOUT, reader.read_until(b'\n', line))
        .await
        .map_err(|_| anyhow!("body stalled for {BODY_STALL_TIMEOUT:?}"))??;
    if n == 0 {
        bail!("connection closed mid-body");
    }
    Ok(())
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_stale(err: &anyhow::Error) -> bool {
    err.downcast_ref::<io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        )
    })
}
