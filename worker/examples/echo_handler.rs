//! A warm handler that answers each invocation with its input, speaking the handler protocol
//! (see `warren_worker::handler`) with Windows line ends (`\r\n`): the handler the Windows smoke
//! run publishes. It logs one line per invocation and exits when its stdin closes.

use std::io::{BufRead, Read, Write};

fn field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let start = header.find(&format!("\"{name}\":"))? + name.len() + 3;
    let rest = header[start..].trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let end = rest.find(['"', ',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn main() {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    out.write_all(b"{\"type\":\"ready\"}\r\n").expect("stdout");
    out.flush().expect("stdout");
    let mut header = String::new();
    loop {
        header.clear();
        if input.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let (Some(id), Some(len)) = (field(&header, "id"), field(&header, "len")) else { continue };
        let mut body = vec![0u8; len.parse().unwrap_or(0)];
        input.read_exact(&mut body).expect("the input follows its header");
        let log = format!("{{\"type\":\"log\",\"id\":\"{id}\",\"line\":\"echoing {} bytes\"}}\r\n", body.len());
        out.write_all(log.as_bytes()).expect("stdout");
        let answer = format!("{{\"type\":\"result\",\"id\":\"{id}\",\"len\":{}}}\r\n", body.len());
        out.write_all(answer.as_bytes()).expect("stdout");
        out.write_all(&body).expect("stdout");
        out.flush().expect("stdout");
    }
}
