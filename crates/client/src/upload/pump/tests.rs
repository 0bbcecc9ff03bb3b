//! The pump against a scripted chunk-session server: an answer that leaves out bytes of the
//! chunk sent does not count them as sent.

use crate::adapter::Protocol;
use crate::options::Parallel;
use crate::progress::NoProgress;
use crate::retry::RetryPolicy;
use crate::state::StateDir;
use crate::upload::{UploadOptions, Uploader};
use ferry_proto::range::{ChunkRange, format_upload_ranges, parse_chunk_range};
use ferry_proto::range_set::RangeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the scripted server holds and saw.
#[derive(Default)]
struct Session {
    bytes: Vec<u8>,
    received: RangeSet,
    /// `(start, end)` of every PUT, half-open.
    puts: Vec<(u64, u64)>,
}

/// A chunk session of `len` bytes whose PUTs keep only what `keep` returns for them (as if
/// another request were still writing the rest), each answered with the ranges received.
async fn serve(len: u64, keep: fn(usize, u64, u64) -> (u64, u64)) -> (String, Arc<Mutex<Session>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let session = Arc::new(Mutex::new(Session {
        bytes: vec![0; len as usize],
        ..Session::default()
    }));
    let s = session.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move { answer(conn, len, keep, &s).await });
        }
    });
    (format!("http://{addr}/chunks/"), session)
}

/// One request per connection (answered with `connection: close`).
async fn answer(
    conn: TcpStream,
    len: u64,
    keep: fn(usize, u64, u64) -> (u64, u64),
    session: &Mutex<Session>,
) {
    let mut conn = BufReader::new(conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let header = |name: &str| {
        head.iter().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = vec![0; header("content-length").map_or(0, |v| v.parse().unwrap())];
    conn.read_exact(&mut body).await.unwrap();
    let method = head[0].split(' ').next().unwrap_or("");
    let status = {
        let mut s = session.lock().unwrap();
        match method {
            "POST" => "201 Created",
            "HEAD" => "200 OK",
            "PUT" => {
                let range = parse_chunk_range(&header("content-range").unwrap()).unwrap();
                let ChunkRange::Bytes { start, end, .. } = range else {
                    panic!("a status query");
                };
                let n = s.puts.len();
                s.puts.push((start, end + 1));
                let (a, b) = keep(n, start, end + 1);
                s.bytes[a as usize..b as usize]
                    .copy_from_slice(&body[(a - start) as usize..(b - start) as usize]);
                s.received.insert(a, b);
                "200 OK"
            }
            _ => "404 Not Found",
        }
    };
    let ranges = format_upload_ranges(session.lock().unwrap().received.ranges());
    let complete = session.lock().unwrap().received.covers(len);
    let mut out = format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n\
         location: /chunks/s\r\nupload-length: {len}\r\nupload-ranges: {ranges}\r\n\
         upload-complete: {}\r\n\r\n",
        if complete { "?1" } else { "?0" }
    );
    if status.starts_with("404") {
        out = "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".into();
    }
    let _ = conn.get_mut().write_all(out.as_bytes()).await;
}

#[tokio::test]
async fn bytes_an_answer_leaves_out_are_sent_again() {
    const LEN: u64 = 100_000;
    const HALF: u64 = LEN / 2;
    // First PUT: the server keeps only the first half (another request holds the second);
    // second PUT: it keeps none of it (still held); third: all of it.
    let (endpoint, session) = serve(LEN, |n, start, end| match n {
        0 => (start, HALF),
        1 => (start, start),
        _ => (start, end),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    let data: Vec<u8> = (0..LEN).map(|i| (i * 7 / 3) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let opts = UploadOptions {
        protocol: Protocol::Chunks,
        parallel: Parallel::Fixed(1),
        verify: false,
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            max_retries: 5,
            max_time: Duration::from_secs(10),
        },
        ..UploadOptions::default()
    };
    let http = crate::http::upload_client(&crate::http::HttpOptions {
        connect_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let up = Uploader::new(
        http,
        StateDir::open(&dir.path().join("state")).unwrap(),
        opts,
        Arc::new(NoProgress),
        CancellationToken::new(),
    );
    let endpoint = endpoint.parse().unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), up.upload(&file, &endpoint, None))
        .await
        .expect("upload took too long");
    done.unwrap();
    let s = session.lock().unwrap();
    assert_eq!(s.puts, vec![(0, LEN), (HALF, LEN), (HALF, LEN)]);
    assert!(s.bytes == data, "the server holds the file");
}
