//! `ringgate-demo-upstream`: a small keep-alive HTTP/1.1 server for demos and load tests.
//!
//! `ringgate-demo-upstream --listen 127.0.0.1:9001 --name a` answers every request with
//! `200 {"upstream":"a","method":…,"path":…,"headers":{…}}`, except `/bytes/N`, which returns N bytes.
//! One thread per connection on std::net: simple and plenty for a demo; not a benchmark target.
//! Input is never trusted: malformed requests get a 400 and the connection is closed.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use clap::Parser;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest `/bytes/N`.
const MAX_BYTES: u64 = 1 << 34;

#[derive(Parser, Debug)]
#[command(
    name = "ringgate-demo-upstream",
    version,
    about = "Demo HTTP/1.1 upstream for ringgate"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: String,
    /// Name reported in every response.
    #[arg(long, default_value = "demo")]
    name: String,
}

fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "ringgate-demo-upstream: cannot listen on {}: {e}",
                args.listen
            );
            std::process::exit(1);
        }
    };
    // The bound address (port 0 resolved), so scripts and tests can find it.
    match listener.local_addr() {
        Ok(a) => eprintln!("ringgate-demo-upstream: {} listening on {a}", args.name),
        Err(_) => eprintln!(
            "ringgate-demo-upstream: {} listening on {}",
            args.name, args.listen
        ),
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let name = args.name.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                // Errors only end this connection.
                let _ = serve(stream, &name);
            });
        if let Err(e) = spawned {
            eprintln!("ringgate-demo-upstream: cannot spawn a connection thread: {e}");
        }
    }
}

struct Request {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// HTTP/1.1 defaults to keep-alive, HTTP/1.0 to close.
    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.http10 {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }
}

fn serve(stream: TcpStream, name: &str) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_head(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(_) => {
                let _ = writer.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return Ok(());
            }
        };
        if req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
        {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if discard_body(&mut reader, &req).is_err() {
            let _ = writer.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Ok(());
        }
        let keep = req.keep_alive();
        respond(&mut writer, name, &req, keep)?;
        if !keep {
            return Ok(());
        }
    }
}

/// Reads one request head. Ok(None) on a clean EOF before any byte.
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut total = 0usize;
    let mut line = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    loop {
        line.clear();
        let n = r
            .by_ref()
            .take((MAX_HEAD - total + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(bad("EOF inside the head"));
        }
        total += n;
        if total > MAX_HEAD || !line.ends_with(b"\n") {
            return Err(bad("head too large"));
        }
        let text = String::from_utf8(line.clone()).map_err(|_| bad("non-UTF-8 head"))?;
        let text = text
            .trim_end_matches('\n')
            .trim_end_matches('\r')
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue; // tolerate a leading empty line
            }
            break;
        }
        lines.push(text);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("bad request line"));
    };
    if method.is_empty() || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(bad("bad request line"));
    }
    let mut headers = Vec::new();
    for l in &lines[1..] {
        let (n, v) = l
            .split_once(':')
            .ok_or_else(|| bad("header without colon"))?;
        if n.is_empty() || n.ends_with(' ') || n.ends_with('\t') {
            return Err(bad("bad header name"));
        }
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        http10: version == "HTTP/1.0",
        headers,
    }))
}

fn discard_body(r: &mut BufReader<TcpStream>, req: &Request) -> io::Result<()> {
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut line = String::new();
            r.by_ref().take(4096).read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or("");
            let size = u64::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut t = String::new();
                    if r.by_ref().take(4096).read_line(&mut t)? == 0 {
                        return Err(bad("EOF in trailers"));
                    }
                    if t.trim_end().is_empty() {
                        return Ok(());
                    }
                }
            }
            let copied = io::copy(&mut r.by_ref().take(size), &mut io::sink())?;
            if copied != size {
                return Err(bad("EOF in chunk"));
            }
            let mut crlf = String::new();
            r.by_ref().take(2).read_line(&mut crlf)?;
            if crlf != "\r\n" {
                return Err(bad("chunk without CRLF"));
            }
        }
    }
    if let Some(cl) = req.header("content-length") {
        if cl.is_empty() || !cl.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("bad content-length"));
        }
        let n: u64 = cl.parse().map_err(|_| bad("bad content-length"))?;
        let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
        if copied != n {
            return Err(bad("EOF in body"));
        }
    }
    Ok(())
}

fn respond(w: &mut TcpStream, name: &str, req: &Request, keep: bool) -> io::Result<()> {
    let conn = if keep { "keep-alive" } else { "close" };
    let head_only = req.method == "HEAD";
    let path = req.target.split('?').next().unwrap_or("");
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Some(n) = n.parse::<u64>().ok().filter(|n| *n <= MAX_BYTES) else {
            let body = "{\"message\":\"bad byte count\"}";
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n",
                body.len()
            );
            w.write_all(head.as_bytes())?;
            if !head_only {
                w.write_all(body.as_bytes())?;
            }
            return Ok(());
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nX-Upstream: {name}\r\nConnection: {conn}\r\n\r\n"
        );
        w.write_all(head.as_bytes())?;
        if head_only {
            return Ok(());
        }
        let block = [b'x'; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            w.write_all(&block[..k])?;
            left -= k as u64;
        }
        return Ok(());
    }
    let mut headers = String::new();
    for (i, (n, v)) in req.headers.iter().enumerate() {
        if i > 0 {
            headers.push(',');
        }
        headers.push_str(&json_str(&n.to_ascii_lowercase()));
        headers.push(':');
        headers.push_str(&json_str(v));
    }
    let body = format!(
        "{{\"upstream\":{},\"method\":{},\"path\":{},\"headers\":{{{}}}}}\n",
        json_str(name),
        json_str(&req.method),
        json_str(&req.target),
        headers
    );
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: {name}\r\nConnection: {conn}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    w.write_all(&out)
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
