//! The server's log output: upload ids are capabilities, so lines at info level and above
//! name uploads by their tag (`UploadId::tag`), whatever text they carry (an error message,
//! a path); debug and trace lines keep full ids for an operator debugging one upload.

use ferry_proto::id::redact_ids;
use std::io::Write;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The instance every line names, once set (instances sharing one database log side by side).
static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Ends every log line from now on with `instance=NAME`.
pub fn name_instance(name: &str) {
    let _ = INSTANCE.set(format!(" instance={name}"));
}

/// `buf` (one formatted event) with the instance's name before its line end.
fn with_instance(buf: Vec<u8>) -> Vec<u8> {
    let Some(tag) = INSTANCE.get() else {
        return buf;
    };
    let mut out = buf;
    let end = if out.ends_with(b"\n") {
        out.len() - 1
    } else {
        out.len()
    };
    out.splice(end..end, tag.bytes());
    out
}

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

/// What a line at or above info level shows of `buf`: its ids replaced by their tags.
fn redacted(buf: &[u8]) -> Vec<u8> {
    // The formatter writes text; should a byte not be UTF-8, it is shown replaced rather than
    // letting the line through unredacted.
    redact_ids(&String::from_utf8_lossy(buf))
        .into_owned()
        .into_bytes()
}

impl Write for Line {
    // The formatter hands over a whole event at once, so no id is split between two calls.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A failed write is dropped: reported, tracing-subscriber would `eprintln!` it, which
        // panics on a closed stderr and takes the logging task down with it.
        let mut err = std::io::stderr().lock();
        let line = if self.redact {
            redacted(buf)
        } else {
            buf.to_vec()
        };
        let _ = err.write_all(&with_instance(line));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn lines_name_the_instance_once_it_is_set() {
        name_instance("web-1");
        assert_eq!(with_instance(b"x y\n".to_vec()), b"x y instance=web-1\n");
        assert_eq!(with_instance(b"no end".to_vec()), b"no end instance=web-1");
    }

    #[test]
    fn info_lines_show_tags_and_debug_lines_ids() {
        let line = format!("WARN ferry_server: read failed error=\"open uploads/00/{ID}\"\n");
        let shown = String::from_utf8(redacted(line.as_bytes())).unwrap();
        assert!(
            !shown.contains(ID) && shown.contains("uploads/00/5947d7c33d"),
            "{shown}"
        );
        let mut bad = line.into_bytes();
        bad.push(0xff);
        assert!(!String::from_utf8_lossy(&redacted(&bad)).contains(ID));
        let at = |level| Stderr.make_writer_for(&meta(level)).redact;
        assert!(at(Level::ERROR) && at(Level::WARN) && at(Level::INFO));
        assert!(!at(Level::DEBUG) && !at(Level::TRACE));
    }

    fn meta(level: Level) -> Metadata<'static> {
        struct Cs;
        impl tracing::callsite::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unreachable!()
            }
        }
        static CS: Cs = Cs;
        Metadata::new(
            "test",
            "ferry",
            level,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CS)),
            tracing::metadata::Kind::EVENT,
        )
    }
}
