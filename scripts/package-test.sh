#!/usr/bin/env bash
# The packed package as a third party gets it: `npm pack`, install the tarball in a scratch project
# (dependencies from the npm cache when present), type-check and run a middleware written in
# TypeScript against the public types (tests/package/*.ts), and run one as a plain ES module.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cd "$root"
tarball=$(npm pack --silent --pack-destination "$work" | tail -n 1)
listing=$(tar -tzf "$work/$tarball")
if grep -q '^package/dist/bench/' <<<"$listing"; then
  echo "package-test: the tarball ships dist/bench" >&2
  exit 1
fi
grep -q '^package/dist/src/index.d.ts$' <<<"$listing" || { echo "package-test: no declarations in the tarball" >&2; exit 1; }

app="$work/app"
mkdir -p "$app/src"
cp tests/package/*.ts tests/package/esm.mjs "$app/src/"
ts_version=$(node -p "require('$root/node_modules/typescript/package.json').version")
types_version=$(node -p "require('$root/node_modules/@types/node/package.json').version")
cat > "$app/package.json" <<JSON
{ "name": "mlx-router-consumer", "private": true, "type": "module" }
JSON
cat > "$app/tsconfig.json" <<JSON
{
  "compilerOptions": {
    "target": "ES2022", "module": "nodenext", "moduleResolution": "nodenext", "strict": true,
    "types": ["node"], "outDir": "dist", "rootDir": "src", "skipLibCheck": false
  },
  "include": ["src/*.ts"]
}
JSON
cd "$app"
npm install --prefer-offline --no-audit --no-fund --loglevel=error "$work/$tarball" "typescript@$ts_version" "@types/node@$types_version" >/dev/null
npx tsc -p tsconfig.json
node dist/run.js
node src/esm.mjs
echo "package-test: ok ($tarball)"
