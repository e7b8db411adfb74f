//! The source work's hand-made command-line features, as input to the isolation forest.

/// Operators whose share of the line is a feature each.
const OPERATORS: [char; 9] = ['%', '*', '^', '`', '/', '+', '-', '=', '>'];
/// Substrings counted (case-insensitively), in the source work's groups: obfuscation,
/// encoded PowerShell, cmd tricks, network, credential access.
const KEYWORDS: [&str; 30] = [
    "echo",
    "replace",
    "#",
    " -e ",
    " -ec ",
    " -enc ",
    " -encodedcommand ",
    "frombase64string(",
    "^",
    "\"\"",
    "set",
    "&&",
    "&&for",
    "for %",
    ";;",
    "http",
    "www.",
    ".com",
    "html",
    "tcp",
    "udp",
    "lsass",
    "samsrv",
    "hklm\\sam",
    "winlogon",
    "netlogon",
    "kerberos.dll",
    "dump",
    ".bin",
    "ntds",
];
/// Printable ASCII, counted per character.
const ASCII_FIRST: u8 = 0x20;
const ASCII_LAST: u8 = 0x7e;
const N_ASCII: usize = (ASCII_LAST - ASCII_FIRST + 1) as usize;

/// Length, 9 operator shares, upper and lower case shares, 95 ASCII counts, entropy, 30 keywords.
pub const N_FEATURES: usize = 1 + OPERATORS.len() + 2 + N_ASCII + 1 + KEYWORDS.len();

/// Names of the features, in order (for reports and debugging).
pub fn feature_names() -> Vec<String> {
    let mut names = vec!["length".to_string()];
    names.extend(OPERATORS.iter().map(|c| format!("share({c})")));
    names.push("share(upper)".into());
    names.push("share(lower)".into());
    names.extend((ASCII_FIRST..=ASCII_LAST).map(|b| format!("count({})", b as char)));
    names.push("entropy".into());
    names.extend(KEYWORDS.iter().map(|k| format!("count({k:?})")));
    names
}

fn count_occurrences(haystack: &str, needle: &str) -> usize {
    haystack.match_indices(needle).count()
}

/// Feature vector of one command line.
pub fn features(cmd: &str) -> [f32; N_FEATURES] {
    let mut f = [0f32; N_FEATURES];
    let n_chars = cmd.chars().count().max(1) as f32;
    let mut i = 0;
    f[i] = cmd.len() as f32;
    i += 1;
    for op in OPERATORS {
        f[i] = cmd.chars().filter(|&c| c == op).count() as f32 / n_chars;
        i += 1;
    }
    f[i] = cmd.chars().filter(|c| c.is_uppercase()).count() as f32 / n_chars;
    f[i + 1] = cmd.chars().filter(|c| c.is_lowercase()).count() as f32 / n_chars;
    i += 2;
    let mut byte_counts = [0u32; 256];
    for &b in cmd.as_bytes() {
        byte_counts[b as usize] += 1;
    }
    for b in ASCII_FIRST..=ASCII_LAST {
        f[i] = byte_counts[b as usize] as f32;
        i += 1;
    }
    let total = cmd.len().max(1) as f64;
    f[i] = byte_counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum::<f64>() as f32;
    i += 1;
    let lower = cmd.to_lowercase();
    for k in KEYWORDS {
        f[i] = count_occurrences(&lower, k) as f32;
        i += 1;
    }
    debug_assert_eq!(i, N_FEATURES);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_measure_what_they_say() {
        assert_eq!(feature_names().len(), N_FEATURES);
        let names = feature_names();
        let at = |name: &str| names.iter().position(|n| n == name).unwrap();
        let f = features("powershell -enc AAAA && echo http://x.com");
        assert_eq!(f[at("length")], 41.0);
        assert_eq!(f[at("count(\" -enc \")")], 1.0);
        assert_eq!(f[at("count(\"&&\")")], 1.0);
        assert_eq!(f[at("count(\"http\")")], 1.0);
        assert_eq!(f[at("count(A)")], 4.0);
        assert!((f[at("share(upper)")] - 4.0 / 41.0).abs() < 1e-6);
        // Entropy: one repeated byte has none; two equally frequent bytes have one bit.
        assert_eq!(features("aaaa")[at("entropy")], 0.0);
        assert!((features("abab")[at("entropy")] - 1.0).abs() < 1e-6);
        // Keywords are case-insensitive, as attackers vary case.
        assert_eq!(features("C:\\x LSASS.exe")[at("count(\"lsass\")")], 1.0);
    }
}
