//! The normalised token view of a command line, as in the source work: the tokens of the
//! regular expression `\w+|[^\w\s]+` (runs of word characters, runs of punctuation;
//! whitespace separates), every ASCII digit replaced by `*`, tokens joined by one space.
//!
//! `\w` is Unicode-aware as in Python's `re`: letters, digits and `_` (here
//! `char::is_alphanumeric() || '_'`); `\s` is `char::is_whitespace()`. Each digit becomes one
//! `*`, so lengths of numbers survive (`8080` -> `****`, `80` -> `**`).

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Word,
    Punct,
    Space,
}

#[inline]
fn class(c: char) -> Class {
    if c.is_alphanumeric() || c == '_' {
        Class::Word
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Punct
    }
}

/// The normalised token view of `cmd` (see the module docs).
///
/// ```
/// use longtail::ingest::normalize;
/// assert_eq!(normalize("ping -n 10 192.168.0.1"), "ping - n ** *** . *** . * . *");
/// assert_eq!(normalize("cmd.exe /c \"echo hi\"&&exit"), "cmd . exe / c \" echo hi \"&& exit");
/// ```
pub fn normalize(cmd: &str) -> String {
    let mut out = String::with_capacity(cmd.len() + cmd.len() / 4);
    normalize_into(cmd, &mut out);
    out
}

/// [`normalize`] into a reused buffer (cleared first).
pub fn normalize_into(cmd: &str, out: &mut String) {
    out.clear();
    let mut prev = Class::Space;
    for c in cmd.chars() {
        let cls = class(c);
        if cls == Class::Space {
            prev = cls;
            continue;
        }
        if cls != prev && !out.is_empty() {
            out.push(' ');
        }
        out.push(if c.is_ascii_digit() { '*' } else { c });
        prev = cls;
    }
}

/// The tokens of `\w+|[^\w\s]+` in `cmd`, unmodified (digits kept).
pub fn tokens(cmd: &str) -> impl Iterator<Item = &str> {
    let mut rest = cmd;
    std::iter::from_fn(move || {
        let start = rest.find(|c: char| class(c) != Class::Space)?;
        rest = &rest[start..];
        let first = class(rest.chars().next()?);
        let end = rest.find(|c: char| class(c) != first).unwrap_or(rest.len());
        let (token, tail) = rest.split_at(end);
        rest = tail;
        Some(token)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_follow_the_regex() {
        let got: Vec<_> = tokens("  a1_b--c  .\\x  é9!").collect();
        assert_eq!(got, ["a1_b", "--", "c", ".\\", "x", "é9", "!"]);
        assert_eq!(tokens("   ").count(), 0);
    }

    #[test]
    fn normalize_replaces_digits_and_joins_tokens() {
        assert_eq!(normalize("  a1_b--c  .\\x  é9!"), "a*_b -- c .\\ x é* !");
        assert_eq!(normalize(""), "");
        assert_eq!(normalize("\t\n"), "");
        let joined: Vec<String> = tokens("ls -la /tmp/42")
            .map(|t| t.replace(|c: char| c.is_ascii_digit(), "*"))
            .collect();
        assert_eq!(normalize("ls -la /tmp/42"), joined.join(" "));
    }
}
