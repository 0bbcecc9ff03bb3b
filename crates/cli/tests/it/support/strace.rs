//! strace log parsing for the fsync-order tests.

use std::collections::HashMap;

/// One syscall event from an strace log.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) line: usize,
    pub(crate) call: String,
    /// The fd's path (`-y`) or the first bytes of the data written.
    pub(crate) arg: String,
}

/// Parses `strace -f -y` output into completed sync calls (at their completion line) and
/// write-like calls (at their entry line, which carries the data).
pub(crate) fn parse_strace(log: &str) -> Vec<Event> {
    let mut pending: HashMap<String, (String, String)> = HashMap::new();
    let mut events = Vec::new();
    for (i, raw) in log.lines().enumerate() {
        let (pid, rest) = match raw.split_once(' ') {
            Some((p, r)) if p.chars().all(|c| c.is_ascii_digit()) => {
                (p.to_string(), r.trim_start())
            }
            _ => ("0".to_string(), raw),
        };
        if let Some(after) = rest.strip_prefix("<... ") {
            let call = after.split_whitespace().next().unwrap_or("").to_string();
            if let Some((c, arg)) = pending.remove(&pid)
                && c == call
                && (call == "fsync" || call == "fdatasync")
            {
                events.push(Event { line: i, call, arg });
            }
            continue;
        }
        let Some(paren) = rest.find('(') else {
            continue;
        };
        let call = rest[..paren].to_string();
        let arg = rest[paren + 1..].to_string();
        let unfinished = rest.contains("<unfinished ...>");
        match call.as_str() {
            "fsync" | "fdatasync" => {
                if unfinished {
                    pending.insert(pid, (call, arg));
                } else if rest.contains(") = 0") {
                    events.push(Event { line: i, call, arg });
                }
            }
            "write" | "writev" | "sendto" | "sendmsg" => events.push(Event { line: i, call, arg }),
            _ => {}
        }
    }
    events
}
