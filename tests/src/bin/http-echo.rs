//! `http-echo ADDR:PORT`: the web server of the HTTPS proxy e2e test, run
//! inside a VM. Answers `GET /bytes/N` with N bytes (a fixed pattern),
//! `POST /echo` with the request body as it streams in, and anything else
//! with the request headers it received, one `name: value` line each, so
//! the test sees exactly what the proxy forwarded. One thread per
//! connection, one request per connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;

fn serve(stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    let mut size = request_line.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        size += line.len();
        if size > MAX_HEAD {
            return out.write_all(b"HTTP/1.1 431 Too Large\r\nConnection: close\r\n\r\n");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let (Some(n), "GET") = (path.strip_prefix("/bytes/"), method) {
        let n: u64 = n.parse().unwrap_or(0);
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {n}\r\nConnection: close\r\n\r\n"
        )?;
        let block: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let mut left = n;
        while left > 0 {
            let k = left.min(block.len() as u64) as usize;
            out.write_all(&block[..k])?;
            left -= k as u64;
        }
        return out.flush();
    }
    if method == "POST" && path == "/echo" {
        let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        if chunked {
            out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                  Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            )?;
            loop {
                let mut size_line = String::new();
                reader.read_line(&mut size_line)?;
                let hex = size_line.trim().split(';').next().unwrap_or("");
                let n = usize::from_str_radix(hex, 16)
                    .map_err(|_| io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk)?;
                write!(out, "{n:x}\r\n")?;
                out.write_all(&chunk)?;
                if n == 0 {
                    return out.flush();
                }
            }
        }
        let n: u64 = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {n}\r\nConnection: close\r\n\r\n"
        )?;
        io::copy(&mut reader.take(n), &mut out)?;
        return out.flush();
    }
    let mut body = format!("{method} {path}\n");
    for (name, value) in &headers {
        body.push_str(&format!("{name}: {value}\n"));
    }
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

fn main() {
    let addr = std::env::args().nth(1).expect("usage: http-echo ADDR:PORT");
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!("http-echo: listening on {addr}");
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            if let Err(e) = serve(stream) {
                eprintln!("http-echo: {e}");
            }
        });
    }
}
