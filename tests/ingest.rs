//! End-to-end tests of `longtail ingest`: the real binary on inputs generated in a temp dir,
//! plus the reader and clustering library API.

use longtail::ingest::{self, MinHashConfig, ReadOptions, SkipReason};
use longtail::io::table;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    let mut c = crate::util::longtail();
    c.arg("-q");
    c
}

fn run(args: &[&str]) -> Output {
    bin()
        .arg("ingest")
        .args(args)
        .output()
        .expect("the longtail binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "ingest failed: {}\n{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

fn input_error(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(2),
        "expected exit code 2, stderr: {}",
        stderr(o)
    );
    let e = stderr(o);
    assert!(!e.contains("panicked"), "panic: {e}");
    e
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().into_owned()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

/// The output table as rows of (cmd, count, first_seen_source, label, platform, cluster).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    cmd: String,
    count: u64,
    source: String,
    label: Option<String>,
    platform: Option<String>,
    cluster: u32,
}

fn rows(path: &Path) -> Vec<Row> {
    let mut out = Vec::new();
    for b in table::read_parquet(path).unwrap() {
        let cmd = table::strings(&b, "cmd", path).unwrap();
        let count = table::numbers(&b, "count", path).unwrap();
        let source = table::strings(&b, "first_seen_source", path).unwrap();
        let label = table::strings(&b, "label", path).unwrap();
        let platform = table::strings(&b, "platform", path).unwrap();
        let cluster = table::numbers(&b, "cluster", path).unwrap();
        for i in 0..b.num_rows() {
            out.push(Row {
                cmd: cmd[i].clone().unwrap(),
                count: count[i] as u64,
                source: source[i].clone().unwrap(),
                label: label[i].clone(),
                platform: platform[i].clone(),
                cluster: cluster[i] as u32,
            });
        }
    }
    out
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn find<'a>(rows: &'a [Row], cmd: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.cmd == cmd)
        .unwrap_or_else(|| panic!("no row {cmd:?} in {rows:#?}"))
}

#[test]
fn jsonl_files_and_globs_dedup_with_counts_labels_and_platforms() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.jsonl",
        br#"{"cmd": "whoami", "label": "benign", "platform": "unknown", "source": "x", "technique": "T1033"}
{"cmd": "ls -la", "label": "benign", "platform": "linux"}
{"cmd": "whoami", "label": "benign", "platform": "windows"}
"#,
    );
    write(
        dir.path(),
        "b.jsonl",
        br#"{"cmd": "whoami", "label": "malicious", "platform": "linux"}
{"cmd": "multi\nline", "label": "unknown"}

{"cmd": "ls -la"}
"#,
    );
    let out = dir.path().join("out/ingest.parquet");
    let sum = dir.path().join("summary.json");
    let glob = format!("{}/*.jsonl", dir.path().display());
    let o = ok(run(&[
        &glob,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("unique lines") && text.contains("by label"),
        "{text}"
    );
    let r = rows(&out);
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].cmd, "whoami", "rows keep first-appearance order");
    let who = find(&r, "whoami");
    assert_eq!(who.count, 3);
    assert_eq!(
        who.label.as_deref(),
        Some("malicious"),
        "malicious wins a label conflict"
    );
    assert_eq!(
        who.platform.as_deref(),
        Some("windows"),
        "unknown yields to the first known platform"
    );
    assert!(who.source.ends_with("a.jsonl"));
    let ls = find(&r, "ls -la");
    assert_eq!(
        (ls.count, ls.label.as_deref(), ls.platform.as_deref()),
        (2, Some("benign"), Some("linux"))
    );
    let ml = find(&r, "multi\nline");
    assert!(ml.source.ends_with("b.jsonl"));
    assert_eq!(ml.platform, None);
    let s = summary(&sum);
    assert_eq!(s["read"]["rows_seen"], 6);
    assert_eq!(s["unique"], 3);
    assert_eq!(s["label_conflicts"], 1);
    assert_eq!(s["clusters"], 3);
    // The schema is the documented one.
    let file = std::fs::File::open(&out).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema();
    let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "cmd",
            "count",
            "first_seen_source",
            "label",
            "platform",
            "cluster"
        ]
    );
    assert_eq!(
        schema.metadata().get("longtail.schema").map(String::as_str),
        Some("ingest/1")
    );
}

#[test]
fn compression_is_detected_by_magic_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let lines = b"echo one\necho two\necho one\n";
    // Names that lie or say nothing: the content decides.
    let gz = write(dir.path(), "plain.txt", &gzip(lines));
    let zs = write(
        dir.path(),
        "noext",
        &zstd(br#"{"cmd": "echo one", "label": "benign"}"#),
    );
    let zcsv = write(
        dir.path(),
        "t.csv.zst",
        &zstd(b"CommandLine,label\n\"echo two\",benign\n"),
    );
    let out = dir.path().join("o.parquet");
    ok(run(&[&gz, &zs, &zcsv, "-o", out.to_str().unwrap()]));
    let r = rows(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(find(&r, "echo one").count, 3);
    assert_eq!(find(&r, "echo two").count, 2);
    assert_eq!(find(&r, "echo one").label.as_deref(), Some("benign"));
}

#[test]
fn csv_tsv_and_parquet_inputs_with_column_choice() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "a.csv",
        b"host,CommandLine,label\nh1,\"cmd /c \"\"dir\"\"\",benign\nh2,\"two\nlines\",malicious\n",
    );
    let tsv = write(dir.path(), "b.tsv", b"cmd\tplatform\nnet user\twindows\n");
    // A Parquet file with a `command_line` column, written by the shared table module.
    use arrow::array::{RecordBatch, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter([
        ("id", Arc::new(StringArray::from(vec!["1", "2", "3"])) as _),
        (
            "command_line",
            Arc::new(StringArray::from(vec![
                Some("net user"),
                None,
                Some("ipconfig /all"),
            ])) as _,
        ),
    ])
    .unwrap();
    let pq = dir.path().join("c.parquet");
    table::write_parquet(&pq, &batch).unwrap();
    // The same Parquet, gzip-compressed.
    let pqgz = write(
        dir.path(),
        "d.parquet.gz",
        &gzip(&std::fs::read(&pq).unwrap()),
    );
    let out = dir.path().join("o.parquet");
    let sum = dir.path().join("s.json");
    ok(run(&[
        &csv,
        &tsv,
        pq.to_str().unwrap(),
        &pqgz,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let r = rows(&out);
    assert_eq!(find(&r, "cmd /c \"dir\"").label.as_deref(), Some("benign"));
    assert_eq!(find(&r, "two\nlines").label.as_deref(), Some("malicious"));
    assert_eq!(find(&r, "net user").count, 3);
    assert_eq!(find(&r, "net user").platform.as_deref(), Some("windows"));
    assert_eq!(find(&r, "ipconfig /all").count, 2);
    let s = summary(&sum);
    assert_eq!(
        s["read"]["skipped"]["no_command"], 2,
        "the two Parquet nulls are counted"
    );
    // --column picks another column; a missing one is an input error naming the columns.
    let out2 = dir.path().join("o2.parquet");
    ok(run(&[
        pq.to_str().unwrap(),
        "--column",
        "id",
        "-o",
        out2.to_str().unwrap(),
    ]));
    assert_eq!(rows(&out2).len(), 3);
    let o = run(&[&csv, "--column", "nope", "-o", out2.to_str().unwrap()]);
    let e = input_error(&o);
    assert!(e.contains("nope") && e.contains("CommandLine"), "{e}");
}

#[test]
fn missing_default_column_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "a.csv", b"x,y\n1,2\n");
    let out = dir.path().join("o.parquet");
    let e = input_error(&run(&[&csv, "-o", out.to_str().unwrap()]));
    assert!(e.contains("--column") && e.contains("x, y"), "{e}");
    assert!(!out.exists());
}

#[test]
fn non_utf8_and_nul_bytes_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let txt = write(
        dir.path(),
        "bad.txt",
        b"caf\xe9 au lait\r\nnul\x00here\nok\n\n",
    );
    let jsonl = write(dir.path(), "bad.jsonl", b"{\"cmd\": \"j\xff\\u0000k\"}\n");
    let out = dir.path().join("o.parquet");
    let sum = dir.path().join("s.json");
    ok(run(&[
        &txt,
        &jsonl,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let r = rows(&out);
    let cmds: Vec<_> = r.iter().map(|r| r.cmd.as_str()).collect();
    assert_eq!(
        cmds,
        ["caf\\xe9 au lait", "nul\\x00here", "ok", "j\\xff\\x00k"]
    );
    let s = summary(&sum);
    assert_eq!(s["read"]["escaped_invalid_utf8"], 2);
    assert_eq!(s["read"]["escaped_nul"], 2);
    assert_eq!(s["read"]["skipped"]["blank"], 1);
}

#[test]
fn a_one_megabyte_line_is_skipped_and_counted_or_kept_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = b"before\n".to_vec();
    data.extend(std::iter::repeat_n(b'A', 1 << 20));
    data.extend_from_slice(b"\nafter\n");
    let txt = write(dir.path(), "big.txt", &data);
    let out = dir.path().join("o.parquet");
    let sum = dir.path().join("s.json");
    ok(run(&[
        &txt,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let cmds: Vec<_> = rows(&out).into_iter().map(|r| r.cmd).collect();
    assert_eq!(
        cmds,
        ["before", "after"],
        "the line after the long one is intact"
    );
    assert_eq!(summary(&sum)["read"]["skipped"]["too_long"], 1);
    // A higher limit keeps it whole; --strict turns the skip into an error with file:line.
    ok(run(&[
        &txt,
        "-o",
        out.to_str().unwrap(),
        "--max-line-bytes",
        "2000000",
    ]));
    let r = rows(&out);
    assert_eq!(r.len(), 3);
    assert_eq!(r[1].cmd.len(), 1 << 20);
    let e = input_error(&run(&[
        &txt,
        "-o",
        dir.path().join("x.parquet").to_str().unwrap(),
        "--strict",
    ]));
    assert!(
        e.contains("big.txt:2") && e.contains("max-line-bytes"),
        "{e}"
    );
    assert!(!dir.path().join("x.parquet").exists());
}

#[test]
fn empty_files_are_counted_and_all_empty_input_fails() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.jsonl", b"");
    let empty_pq = write(dir.path(), "empty.parquet", b"");
    let empty_gz = write(dir.path(), "empty.txt.gz", &gzip(b""));
    let some = write(dir.path(), "some.txt", b"id\n");
    let out = dir.path().join("o.parquet");
    let sum = dir.path().join("s.json");
    ok(run(&[
        &empty,
        &empty_pq,
        &empty_gz,
        &some,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let s = summary(&sum);
    assert_eq!(s["read"]["empty_files"], 3);
    assert_eq!(s["read"]["files"], 4);
    let out2 = dir.path().join("none.parquet");
    let e = input_error(&run(&[&empty, &empty_gz, "-o", out2.to_str().unwrap()]));
    assert!(e.contains("no command lines"), "{e}");
    assert!(!out2.exists(), "nothing is written when nothing was read");
}

#[test]
fn truncated_or_corrupt_parquet_fails_and_leaves_the_old_output() {
    let dir = tempfile::tempdir().unwrap();
    use arrow::array::{RecordBatch, StringArray};
    use std::sync::Arc;
    let cmds: Vec<String> = (0..5000).map(|i| format!("cmd number {i}")).collect();
    let batch =
        RecordBatch::try_from_iter([("cmd", Arc::new(StringArray::from(cmds)) as _)]).unwrap();
    let good = dir.path().join("good.parquet");
    table::write_parquet(&good, &batch).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let truncated = write(dir.path(), "trunc.parquet", &bytes[..bytes.len() / 2]);
    let mut garbage = bytes.clone();
    let mid = garbage.len() / 2;
    garbage[8..mid].iter_mut().for_each(|b| *b = 0x5a);
    let corrupt = write(dir.path(), "corrupt.parquet", &garbage);
    let out = dir.path().join("o.parquet");
    std::fs::write(&out, b"previous output").unwrap();
    let text = write(dir.path(), "first.txt", b"ls\n");
    for bad in [&truncated, &corrupt] {
        let e = input_error(&run(&[&text, bad, "-o", out.to_str().unwrap()]));
        assert!(e.contains(bad.as_str()), "the message names the file: {e}");
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"previous output",
            "no half-written output"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files are cleaned up: {leftovers:?}"
    );
}

#[test]
fn truncated_gzip_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    let data: String = (0..20000)
        .map(|i| format!("line {i} with some text\n"))
        .collect();
    let gz = gzip(data.as_bytes());
    let cut = write(dir.path(), "cut.txt.gz", &gz[..gz.len() / 2]);
    let out = dir.path().join("o.parquet");
    let e = input_error(&run(&[&cut, "-o", out.to_str().unwrap()]));
    assert!(
        e.contains("cut.txt.gz") && e.contains("truncated or corrupt"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn malformed_jsonl_rows_are_counted_or_fatal_with_strict() {
    let dir = tempfile::tempdir().unwrap();
    let j = write(
        dir.path(),
        "m.jsonl",
        br#"{"cmd": "good one"}
{"cmd": "unterminated
[1, 2]
{"other": "no cmd"}
{"cmd": 42}
{"cmd": null}
{"cmd": "good two", "label": 1}
"#,
    );
    let out = dir.path().join("o.parquet");
    let sum = dir.path().join("s.json");
    let o = ok(run(&[
        &j,
        "-o",
        out.to_str().unwrap(),
        "--summary-json",
        sum.to_str().unwrap(),
    ]));
    let log = stderr(&o);
    assert!(
        log.contains("m.jsonl:2"),
        "warnings name file and line: {log}"
    );
    let r = rows(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(
        find(&r, "good two").label.as_deref(),
        Some("1"),
        "non-string labels keep their JSON text"
    );
    let s = summary(&sum);
    assert_eq!(s["read"]["skipped"]["malformed_json"], 2);
    assert_eq!(s["read"]["skipped"]["no_command"], 3);
    let e = input_error(&run(&[
        &j,
        "-o",
        dir.path().join("x.parquet").to_str().unwrap(),
        "--strict",
    ]));
    assert!(
        e.contains("m.jsonl:2") && e.contains("malformed JSON"),
        "{e}"
    );
}

#[test]
fn missing_inputs_and_bad_flags_are_input_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.parquet");
    let e = input_error(&run(&[
        "/nonexistent/file.jsonl",
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(e.contains("does not exist"), "{e}");
    let pattern = format!("{}/*.nothing", dir.path().display());
    let e = input_error(&run(&[&pattern, "-o", out.to_str().unwrap()]));
    assert!(e.contains("matched no files"), "{e}");
    let f = write(dir.path(), "a.txt", b"x\n");
    let e = input_error(&run(&[
        &f,
        "-o",
        out.to_str().unwrap(),
        "--near-dup-threshold",
        "1.5",
    ]));
    assert!(e.contains("threshold"), "{e}");
    let utf16 = write(dir.path(), "w.txt", b"\xff\xfec\x00m\x00d\x00\n\x00");
    let e = input_error(&run(&[&utf16, "-o", out.to_str().unwrap()]));
    assert!(e.contains("UTF-16"), "{e}");
}

#[test]
fn near_duplicates_share_a_cluster_and_the_threshold_matters() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\ProgramData\agent\update-task-0001.ps1",
        r"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\ProgramData\agent\update-task-0002.ps1",
        r"powershell.exe -NoProfile -ExecutionPolicy Bypass -File C:\ProgramData\agent\update-task-0003.ps1",
        "rsync -avz --delete --exclude '*.tmp' /srv/www/htdocs/ backup@10.0.0.5:/backups/www/htdocs/",
        "rsync -avz --delete --exclude '*.tmp' /srv/www/htdocs/ backup@10.0.0.6:/backups/www/htdocs/",
        "tar czf /tmp/logs.tgz /var/log/nginx",
    ];
    let txt = write(dir.path(), "l.txt", (lines.join("\n") + "\n").as_bytes());
    let out = dir.path().join("o.parquet");
    ok(run(&[&txt, "-o", out.to_str().unwrap()]));
    let c: Vec<u32> = rows(&out).iter().map(|r| r.cluster).collect();
    assert_eq!(c, [0, 0, 0, 1, 1, 2]);
    // A threshold of 1.0 only joins identical shingle sets; --no-near-dup numbers the rows.
    ok(run(&[
        &txt,
        "-o",
        out.to_str().unwrap(),
        "--near-dup-threshold",
        "1",
    ]));
    let c: Vec<u32> = rows(&out).iter().map(|r| r.cluster).collect();
    assert_eq!(c, [0, 1, 2, 3, 4, 5]);
    ok(run(&[&txt, "-o", out.to_str().unwrap(), "--no-near-dup"]));
    let c: Vec<u32> = rows(&out).iter().map(|r| r.cluster).collect();
    assert_eq!(c, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn normalized_column_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let txt = write(dir.path(), "l.txt", b"ping -n 10 192.168.0.1\n");
    let out = dir.path().join("o.parquet");
    ok(run(&[&txt, "-o", out.to_str().unwrap(), "--normalized"]));
    let b = &table::read_parquet(&out).unwrap()[0];
    let n = table::strings(b, "normalized", &out).unwrap();
    assert_eq!(n[0].as_deref(), Some("ping - n ** *** . *** . * . *"));
}

#[test]
fn stdin_input_and_deterministic_output() {
    let dir = tempfile::tempdir().unwrap();
    let data: String = (0..3000)
        .map(|i| {
            format!(
                "curl -s http://host{}.example/api/v{}/items?page={}\n",
                i % 50,
                i % 3,
                i % 7
            )
        })
        .collect();
    let mut outputs = Vec::new();
    for k in 0..2 {
        let out = dir.path().join(format!("o{k}.parquet"));
        let mut child = bin()
            .args(["ingest", "-", "-o", out.to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(data.as_bytes())
            .unwrap();
        let o = ok(child.wait_with_output().unwrap());
        drop(o);
        outputs.push(rows(&out));
    }
    assert_eq!(outputs[0], outputs[1]);
    assert_eq!(
        outputs[0].len(),
        1050,
        "(i mod 50, i mod 3, i mod 7) takes 1050 values"
    );
    assert_eq!(outputs[0][0].source, "<stdin>");
    assert_eq!(outputs[0].iter().map(|r| r.count).sum::<u64>(), 3000);
}

#[test]
fn library_reader_keeps_jsonl_extras_and_reports_skips() {
    let dir = tempfile::tempdir().unwrap();
    let j = write(
        dir.path(),
        "x.jsonl.gz",
        &gzip(
            br#"{"cmd": "net view", "label": "malicious", "platform": "windows", "source": "o/r:p", "technique": "T1135"}
{"process": {"command_line": "ps aux", "pid": 1}}
not json
"#,
        ),
    );
    let opts = ReadOptions {
        keep_extra: true,
        progress: false,
        ..Default::default()
    };
    let mut got = Vec::new();
    let stats = ingest::for_each_record(std::slice::from_ref(&j), &opts, |r| {
        got.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].cmd, "net view");
    assert_eq!(got[0].label.as_deref(), Some("malicious"));
    assert_eq!(got[0].platform.as_deref(), Some("windows"));
    assert_eq!(got[0].extra["technique"], "T1135");
    assert_eq!(
        got[0].extra["source"], "o/r:p",
        "the JSONL `source` field stays in extra"
    );
    assert!(!got[0].extra.contains_key("cmd"));
    assert_eq!(&*got[0].source, j.as_str());
    assert_eq!(
        got[1].cmd, "ps aux",
        "dotted default column reaches into nested objects"
    );
    assert_eq!(got[1].line, 2);
    assert_eq!(got[1].extra["process"]["pid"], 1);
    assert_eq!(stats.records, 2);
    assert_eq!(stats.skipped.get(&SkipReason::MalformedJson), Some(&1));
    // An error from the callback stops reading and comes back.
    let err = ingest::for_each_record(&[j], &opts, |_| Err(longtail::Error::runtime("stop")))
        .unwrap_err();
    assert_eq!(err.to_string(), "stop");
}

#[test]
fn library_clustering_is_deterministic_and_groups_mutations() {
    // 200 unrelated 120-byte lines and, for each, a copy with one byte changed in the middle
    // (Jaccard over 5-byte shingles about 0.92).
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789 -/._";
    let base: Vec<String> = (0..200)
        .map(|_| {
            (0..120)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect()
        })
        .collect();
    let mut lines: Vec<String> = base.clone();
    lines.extend(base.iter().map(|l| {
        let mut b = l.clone().into_bytes();
        b[60] = if b[60] == b'#' { b'%' } else { b'#' };
        String::from_utf8(b).unwrap()
    }));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let cfg = MinHashConfig::default();
    let a = ingest::near_duplicate_clusters(&refs, &cfg).unwrap();
    let b = ingest::near_duplicate_clusters(
        &refs,
        &MinHashConfig {
            threads: 1,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert_eq!(a, b);
    let joined = (0..200).filter(|&i| a[i] == a[i + 200]).count();
    assert!(joined >= 195, "variants found: {joined}/200");
    let distinct_bases: std::collections::HashSet<u32> = a[..200].iter().copied().collect();
    assert_eq!(distinct_bases.len(), 200, "unrelated lines stay apart");
    assert_eq!(
        a[..200].to_vec(),
        (0..200).collect::<Vec<u32>>(),
        "ids are dense in first-appearance order"
    );
}
