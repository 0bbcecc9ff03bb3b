//! The server's log output: upload ids are capabilities, so lines at info level and above
//! name uploads by their tag (`UploadId::tag`), whatever text they carry (an error message,
//! a path); debug and trace lines keep full ids for an operator debugging one upload.

use ferry_proto::id::redact_ids;
use std::io::Write;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Standard error, redacting ids in lines at info level and above.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

/// One log line's writer.
#[derive(Debug)]
pub struct Line {
    redact: bool,
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { redact: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            redact: *meta.level() <= Level::INFO,
        }
    }
}

impl Write for Line {
    // The formatter hands over a whole event at once, so no id is split between two calls.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut err = std::io::stderr().lock();
        match std::str::from_utf8(buf) {
            Ok(text) if self.redact => err.write_all(redact_ids(text).as_bytes())?,
            _ => err.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
