#!/usr/bin/env node
// Compiles every contracts/**/*.sol with the pinned solcjs and writes one JSON artifact per
// contract to contracts/artifacts/. The artifacts are checked in so Python code and tests can
// deploy and call the contracts without a compiler; `--check` recompiles and fails on any
// difference, so a checked-in artifact can never silently drift from its source.
//
// Usage: node contracts/build.mjs [--check] [--root DIR]
//   --check     compare instead of write; exit 1 if any artifact is missing, stale or extra
//   --root DIR  project root holding contracts/ (default: the parent of this script's folder)

import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import solc from 'solc';

// Changing any of these changes bytecode and gas; the artifacts record them so a reader of an
// artifact knows exactly how it was produced. evmVersion must be one that anvil and the
// target chain both run (cancun opcodes run on every later fork).
const SETTINGS = Object.freeze({
  evmVersion: 'cancun',
  optimizer: { enabled: true, runs: 10000 },
  viaIR: false,
  metadata: { bytecodeHash: 'ipfs' },
});

const EXIT_DRIFT = 1;
const EXIT_USAGE = 64;
const EXIT_COMPILE = 65;

function parseArgs(argv) {
  const opts = { check: false, root: resolve(dirname(fileURLToPath(import.meta.url)), '..') };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--check') opts.check = true;
    else if (arg === '--root' && i + 1 < argv.length) opts.root = resolve(argv[(i += 1)]);
    else {
      process.stderr.write(`usage: node contracts/build.mjs [--check] [--root DIR]\nunknown argument: ${arg}\n`);
      process.exit(EXIT_USAGE);
    }
  }
  return opts;
}

// Source keys are POSIX paths relative to the root: they end up in the metadata hash inside
// the bytecode, so they must not depend on where the checkout lives.
function findSources(root) {
  const contractsDir = join(root, 'contracts');
  const found = [];
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.name === 'artifacts' || entry.name === 'node_modules' || entry.name.startsWith('.')) continue;
      const full = join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else if (entry.isFile() && entry.name.endsWith('.sol')) found.push(relative(root, full).split(sep).join('/'));
    }
  };
  walk(contractsDir);
  return found.sort();
}

function sortKeys(value) {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys(value[k])]));
  }
  return value;
}

function sha256(text) {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

// One compilation per file keeps each contract's metadata (and so its bytecode) independent
// of unrelated sources that happen to sit in the same folder.
function compileFile(root, sourcePath) {
  const content = readFileSync(join(root, sourcePath), 'utf8');
  const input = {
    language: 'Solidity',
    sources: { [sourcePath]: { content } },
    settings: {
      ...SETTINGS,
      outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
    },
  };
  const importCallback = (path) => {
    try {
      return { contents: readFileSync(join(root, path), 'utf8') };
    } catch (err) {
      return { error: `cannot read import ${path}: ${err.message}` };
    }
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: importCallback }));
  // Warnings are fatal too: the contracts are small enough to keep at zero warnings, and a
  // warning is often a real bug (shadowing, unreachable code, unused return value).
  const problems = (output.errors ?? []).filter((e) => e.severity !== 'info');
  if (problems.length > 0) {
    for (const e of problems) process.stderr.write(`${e.formattedMessage ?? e.message}\n`);
    process.exit(EXIT_COMPILE);
  }
  const artifacts = [];
  for (const [name, contract] of Object.entries(output.contracts?.[sourcePath] ?? {})) {
    artifacts.push({
      contractName: name,
      sourcePath,
      sourceSha256: sha256(content),
      abi: contract.abi,
      bytecode: `0x${contract.evm.bytecode.object}`,
      deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
      compiler: { version: solc.version(), settings: SETTINGS },
    });
  }
  return artifacts;
}

function render(artifact) {
  return `${JSON.stringify(sortKeys(artifact), null, 2)}\n`;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const artifactsDir = join(opts.root, 'contracts', 'artifacts');
  const expected = new Map();
  for (const sourcePath of findSources(opts.root)) {
    for (const artifact of compileFile(opts.root, sourcePath)) {
      const file = `${artifact.contractName}.json`;
      if (expected.has(file)) {
        process.stderr.write(`duplicate contract name ${artifact.contractName} (${sourcePath})\n`);
        process.exit(EXIT_COMPILE);
      }
      expected.set(file, render(artifact));
    }
  }

  let existing = [];
  try {
    existing = readdirSync(artifactsDir).filter((f) => f.endsWith('.json'));
  } catch {
    existing = [];
  }

  if (opts.check) {
    const problems = [];
    for (const [file, text] of expected) {
      let current = null;
      try {
        current = readFileSync(join(artifactsDir, file), 'utf8');
      } catch {
        problems.push(`missing: contracts/artifacts/${file}`);
        continue;
      }
      if (current !== text) problems.push(`stale:   contracts/artifacts/${file}`);
    }
    for (const file of existing) {
      if (!expected.has(file)) problems.push(`extra:   contracts/artifacts/${file} (no source defines it)`);
    }
    if (problems.length > 0) {
      process.stderr.write(`${problems.join('\n')}\nartifacts differ from a fresh compile; run: node contracts/build.mjs\n`);
      process.exit(EXIT_DRIFT);
    }
    process.stdout.write(`${expected.size} artifacts match solc ${solc.version()}\n`);
    return;
  }

  mkdirSync(artifactsDir, { recursive: true });
  for (const file of existing) {
    if (!expected.has(file)) rmSync(join(artifactsDir, file));
  }
  for (const [file, text] of expected) writeFileSync(join(artifactsDir, file), text);
  process.stdout.write(`wrote ${expected.size} artifacts with solc ${solc.version()}\n`);
}

main();
