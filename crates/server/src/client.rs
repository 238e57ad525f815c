//! A minimal blocking HTTP/1.1 client for the server's own tests and load runs: one request
//! per connection (`Connection: close`), JSON bodies, and server-sent events read as they
//! arrive (chunked transfer encoding decoded on the fly).

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A whole response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    /// The body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    let mut reader = send(addr, "GET", path, None)?;
    let (status, headers) = read_head(&mut reader)?;
    Ok(Response { status, body: read_body(reader, &headers)? })
}

pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<Response> {
    let mut reader = send(addr, "POST", path, Some(body))?;
    let (status, headers) = read_head(&mut reader)?;
    Ok(Response { status, body: read_body(reader, &headers)? })
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value) -> std::io::Result<Response> {
    post(addr, path, body.to_string().as_bytes())
}

/// POST `body` and hand each server-sent event's `data` to `on_data` as it arrives; `on_data`
/// returning false hangs up. A response that is not an event stream (an error) comes back whole
/// as `Ok(Some(response))`; after a stream, `Ok(None)`.
pub fn post_stream(addr: SocketAddr, path: &str, body: &Value, mut on_data: impl FnMut(&str) -> bool) -> std::io::Result<Option<Response>> {
    let mut reader = send(addr, "POST", path, Some(body.to_string().as_bytes()))?;
    let (status, headers) = read_head(&mut reader)?;
    let is_stream = header(&headers, "content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if status != 200 || !is_stream {
        return Ok(Some(Response { status, body: read_body(reader, &headers)? }));
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut body = Body { reader, chunked, left: 0, ended: false };
    let mut line = Vec::new();
    let mut data = String::new();
    while body.read_line(&mut line)? {
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text.is_empty() {
            if !data.is_empty() && !on_data(&data) {
                return Ok(None);
            }
            data.clear();
        } else if let Some(payload) = text.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(payload.strip_prefix(' ').unwrap_or(payload));
        }
        line.clear();
    }
    Ok(None)
}

fn send(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<BufReader<TcpStream>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n");
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    Ok(BufReader::new(stream))
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("not an HTTP status line: {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn read_body(mut reader: BufReader<TcpStream>, headers: &[(String, String)]) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Body { reader, chunked: true, left: 0, ended: false };
        let mut line = Vec::new();
        while body.read_line(&mut line)? {
            bytes.append(&mut line);
        }
    } else if let Some(length) = header(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        bytes.resize(length, 0);
        reader.read_exact(&mut bytes)?;
    } else {
        reader.read_to_end(&mut bytes)?;
    }
    String::from_utf8(bytes).map_err(|e| bad(format!("the body is not UTF-8: {e}")))
}

/// A response body, chunked or not, read line by line.
struct Body {
    reader: BufReader<TcpStream>,
    chunked: bool,
    /// Bytes left in the current chunk.
    left: usize,
    ended: bool,
}

impl Body {
    /// Append the next line (with its `\n`) to `line`; false at the end of the body.
    fn read_line(&mut self, line: &mut Vec<u8>) -> std::io::Result<bool> {
        if !self.chunked {
            return Ok(self.reader.read_until(b'\n', line)? > 0);
        }
        loop {
            if self.ended {
                return Ok(!line.is_empty());
            }
            if self.left == 0 {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = size.trim();
                if size.is_empty() {
                    continue;
                }
                self.left = usize::from_str_radix(size.split(';').next().unwrap_or(size), 16).map_err(|_| bad(format!("bad chunk size {size:?}")))?;
                if self.left == 0 {
                    self.ended = true;
                    continue;
                }
            }
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                self.ended = true;
                continue;
            }
            let take = buffer.len().min(self.left);
            let newline = buffer[..take].iter().position(|&b| b == b'\n');
            let n = newline.map_or(take, |i| i + 1);
            line.extend_from_slice(&buffer[..n]);
            self.reader.consume(n);
            self.left -= n;
            if self.left == 0 {
                // The CRLF after the chunk's data.
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
            if newline.is_some() {
                return Ok(true);
            }
        }
    }
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}
