//! `Content-Disposition` values (RFC 6266) for downloads.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

/// Longest file name kept, in chars.
const MAX_NAME_CHARS: usize = 200;

/// Everything outside RFC 5987 `attr-char` is percent-encoded.
const NOT_ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// Builds a `Content-Disposition` value for an untrusted, uploader-supplied
/// file name (e.g. [`crate::Metadata::filename`]).
///
/// The name is reduced to its part after the last `/` or `\`, decoded
/// lossily as UTF-8, stripped of control characters and of bidirectional
/// formatting characters (which can disguise an extension), trimmed of spaces
/// and dots at both ends and cut to 200 chars. If nothing remains the result
/// is `attachment`; otherwise
/// `attachment; filename="<ascii fallback>"; filename*=UTF-8''<encoded>`,
/// where the fallback has every non-ASCII char and `"`, `\`, `%` replaced by
/// `_`. The result only ever contains visible ASCII and spaces, so it is
/// always a valid header value.
pub fn attachment(filename: Option<&[u8]>) -> String {
    let name = filename.map(sanitize).unwrap_or_default();
    if name.is_empty() {
        return "attachment".to_owned();
    }
    let fallback: String = name
        .chars()
        .map(|c| match c {
            '"' | '\\' | '%' => '_',
            c if c.is_ascii() => c,
            _ => '_',
        })
        .collect();
    let encoded = utf8_percent_encode(&name, NOT_ATTR_CHAR);
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

/// Applies the name rules of [`attachment`]; may return an empty string.
fn sanitize(raw: &[u8]) -> String {
    // Both separators are ASCII, so splitting bytes before decoding is safe.
    let base = match raw.iter().rposition(|&b| b == b'/' || b == b'\\') {
        Some(i) => &raw[i + 1..],
        None => raw,
    };
    let cleaned: String = String::from_utf8_lossy(base)
        .chars()
        .filter(|&c| !c.is_control() && !is_bidi_control(c))
        .collect();
    let trimmed = trim_name(&cleaned);
    let cut = match trimmed.char_indices().nth(MAX_NAME_CHARS) {
        Some((i, _)) => &trimmed[..i],
        None => trimmed,
    };
    // Cutting can expose a trailing space or dot again.
    trim_name(cut).to_owned()
}

fn trim_name(s: &str) -> &str {
    s.trim_matches([' ', '.'])
}

/// Invisible characters that reorder text, as in "invoice\u{202e}fdp.exe".
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn att(name: &str) -> String {
        attachment(Some(name.as_bytes()))
    }

    #[test]
    fn plain_names() {
        assert_eq!(
            att("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            att("my file (1).txt"),
            "attachment; filename=\"my file (1).txt\"; filename*=UTF-8''my%20file%20%281%29.txt"
        );
    }

    #[test]
    fn empty_results() {
        assert_eq!(attachment(None), "attachment");
        for name in [
            "", " ", ".", "..", "...", " . . ", "/", "a/", "a\\", "\r\n", "\0", "../", "\u{202e}",
        ] {
            assert_eq!(att(name), "attachment", "{name:?}");
        }
    }

    #[test]
    fn paths_are_stripped() {
        assert_eq!(att("../../etc/passwd"), att("passwd"));
        assert_eq!(att("C:\\Users\\me\\evil.exe"), att("evil.exe"));
        assert_eq!(att("a/b\\c/d.txt"), att("d.txt"));
        assert_eq!(att("..\\..\\x"), att("x"));
    }

    #[test]
    fn header_injection_is_neutralised() {
        let v = att("a\r\nSet-Cookie: x=1\".txt");
        assert_eq!(
            v,
            "attachment; filename=\"aSet-Cookie: x=1_.txt\"; \
             filename*=UTF-8''aSet-Cookie%3A%20x%3D1%22.txt"
        );
        assert_eq!(
            att("a\0b\u{7f}c\u{85}d\te"),
            "attachment; filename=\"abcde\"; filename*=UTF-8''abcde"
        );
    }

    #[test]
    fn quotes_backslashes_percent() {
        assert_eq!(
            att("50% \"off\".txt"),
            "attachment; filename=\"50_ _off_.txt\"; filename*=UTF-8''50%25%20%22off%22.txt"
        );
    }

    #[test]
    fn unicode() {
        assert_eq!(
            att("naïve résumé.pdf"),
            "attachment; filename=\"na_ve r_sum_.pdf\"; \
             filename*=UTF-8''na%C3%AFve%20r%C3%A9sum%C3%A9.pdf"
        );
        assert_eq!(
            att("😀.png"),
            "attachment; filename=\"_.png\"; filename*=UTF-8''%F0%9F%98%80.png"
        );
        // Invalid UTF-8 becomes U+FFFD.
        assert_eq!(
            attachment(Some(b"a\xffb")),
            "attachment; filename=\"a_b\"; filename*=UTF-8''a%EF%BF%BDb"
        );
        // Right-to-left override is dropped.
        assert_eq!(att("invoice\u{202e}fdp.exe"), att("invoicefdp.exe"));
    }

    #[test]
    fn attr_chars_are_kept() {
        let keep = "az09!#$&+-.^_`|~";
        assert_eq!(
            att(keep),
            format!("attachment; filename=\"{keep}\"; filename*=UTF-8''{keep}")
        );
        assert!(att("a*b'c;d=e,f").ends_with("a%2Ab%27c%3Bd%3De%2Cf"));
    }

    #[test]
    fn trimming_and_length() {
        assert_eq!(att("  .hidden. "), att("hidden"));
        let long = "x".repeat(500);
        assert_eq!(att(&long), att(&"x".repeat(200)));
        let long = "é".repeat(500);
        assert_eq!(att(&long), att(&"é".repeat(200)));
        // A cut that lands before dots/spaces trims them too.
        let name = format!("{}. . .tail", "a".repeat(198));
        assert_eq!(att(&name), att(&"a".repeat(198)));
    }

    fn is_header_safe(v: &str) -> bool {
        v.bytes().all(|b| b == b' ' || (0x21..=0x7e).contains(&b))
    }

    proptest! {
        #[test]
        fn always_a_valid_header_value(raw in prop::collection::vec(any::<u8>(), 0..300)) {
            let v = attachment(Some(&raw));
            prop_assert!(is_header_safe(&v), "{:?}", v);
            prop_assert!(v.starts_with("attachment"));
        }

        #[test]
        fn always_valid_for_strings(s in any::<String>()) {
            let v = att(&s);
            prop_assert!(is_header_safe(&v), "{:?}", v);
            // The quoted fallback never ends early.
            if let Some(rest) = v.strip_prefix("attachment; filename=\"") {
                let end = rest.find('"').unwrap();
                prop_assert!(rest[end..].starts_with("\"; filename*=UTF-8''"));
            }
        }

        #[test]
        fn fallback_is_at_most_200_chars(s in "[a-z .é/]{0,400}") {
            let v = att(&s);
            if let Some(rest) = v.strip_prefix("attachment; filename=\"") {
                let end = rest.find('"').unwrap();
                prop_assert!(end <= 200);
                prop_assert!(!rest[..end].starts_with([' ', '.']));
                prop_assert!(!rest[..end].ends_with([' ', '.']));
            }
        }
    }
}
