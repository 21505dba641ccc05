//! A client for the root suites: connects to `addr`, prints what `getpeername()` says
//! (`peer=`), sends `ping`, prints the first line that comes back (`reply=`). Exits 2 if
//! the connect fails, printing the error kind (`error=`). With a second argument (ms), it
//! keeps the connection open that long after the reply.
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

fn main() -> ExitCode {
    let Some(addr) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<SocketAddr>().ok())
    else {
        eprintln!("usage: connect-probe <ip:port>");
        return ExitCode::from(64);
    };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            println!("error={:?}", e.kind());
            return ExitCode::from(2);
        }
    };
    match stream.peer_addr() {
        Ok(peer) => println!("peer={peer}"),
        Err(e) => println!("peer-error={e}"),
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    if stream.write_all(b"ping\n").is_err() {
        return ExitCode::from(3);
    }
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    println!("reply={}", line.trim_end());
    if let Some(ms) = std::env::args().nth(2).and_then(|a| a.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    ExitCode::SUCCESS
}
