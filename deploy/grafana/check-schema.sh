#!/usr/bin/env bash
# Type-checks the dashboard JSON against Grafana's own schema (the `Dashboard` type of
# the npm package @grafana/schema, the JSON model of schemaVersion 39 dashboards): an
# unknown or misspelt field, or a value of the wrong type, fails. Needs node and npm;
# not run in CI (which has neither). Usage: deploy/grafana/check-schema.sh [VERSION]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm install --silent --no-audit --no-fund "@grafana/schema@${1:-13}" typescript@5 >/dev/null
# TypeScript string enums refuse the plain strings JSON carries: turn each enum of the
# schema into the union of its values, as Grafana reads them.
python3 - "$here/dashboards/chatbot.json" <<'PY'
import re, sys
src = open("node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts").read()
members = {}
def union(match):
    pairs = re.findall(r'(\w+)\s*=\s*("[^"]*"|-?\d+)', match.group(2))
    members.update({f"{match.group(1)}.{name}": value for name, value in pairs})
    return f"export type {match.group(1)} = {' | '.join(v for _, v in pairs) or 'never'};"
types = re.sub(r"export declare enum (\w+) \{([^}]*)\}", union, src)
for ref, value in members.items():
    types = re.sub(r"\b" + re.escape(ref) + r"\b", value, types)
open("types.ts", "w").write(types)
board = open(sys.argv[1]).read().strip()
open("check.ts", "w").write(
    f'import type {{ Dashboard }} from "./types";\nexport const board = {board} satisfies Dashboard;\n'
)
PY
cat > tsconfig.json <<'JSON'
{"compilerOptions": {"strict": true, "noEmit": true, "target": "es2020", "module": "commonjs"},
 "files": ["check.ts", "types.ts"]}
JSON
npx tsc -p . && echo "dashboard matches @grafana/schema $(node -p 'require("@grafana/schema/package.json").version')"
