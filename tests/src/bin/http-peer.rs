//! `http-peer ADDR:PORT`: a tiny HTTP server for the network e2e test. It
//! plays a server "outside" the host and answers every request with the
//! source address it saw (`peer <ip>`), so the test can check that a VM's
//! traffic arrived masqueraded. Each connection is logged on stderr.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

fn serve(stream: TcpStream) -> std::io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    // Read the request head (bounded): up to the blank line.
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
            break;
        }
    }
    let body = format!("peer {}\n", peer.ip());
    eprintln!("http-peer: {body}");
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn main() {
    let addr = std::env::args().nth(1).expect("usage: http-peer ADDR:PORT");
    let listener = TcpListener::bind(&addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    eprintln!("http-peer: listening on {addr}");
    for stream in listener.incoming().flatten() {
        if let Err(e) = serve(stream) {
            eprintln!("http-peer: {e}");
        }
    }
}
