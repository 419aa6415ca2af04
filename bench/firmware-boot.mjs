#!/usr/bin/env node
// Firmware boot benchmark (issue 10): the same image (build/images/grub.iso), the same firmware (Debian's SeaBIOS,
// bios-256k.bin), the same 256 MiB, on Partita and on QEMU's `pc` machine, side by side in one run, for the three
// boot paths of test/integration/firmware-pc.test.ts: ATAPI CD on AHCI, SATA disk on AHCI, virtio-blk.
//
//   node bench/firmware-boot.mjs [--runs N] [--paths atapi-cd,ahci-disk,virtio-blk] [--tcg] [--no-qemu-exits]
//                                [--timeout SECONDS] [--json FILE]
//
// Per run and path: the time from the reset vector (the guest's first instruction) to GRUB's menu complete on the
// serial port ("Partita test: second entry"; the VMM is then stopped with SIGTERM), which is what issue 10's target
// is about; the wall time from spawning the VMM, which adds each VMM's own start-up; and the exits to userspace by kind: Partita's from
// `--stats`, QEMU's counted from its `kvm_run_exit` trace event (one line per KVM_RUN that returned an exit, the
// reason as KVM numbers it: the same thing Partita counts). The trace is written by a separate QEMU run, so the
// timed run carries no tracing cost. Exits keep coming while the menu waits for a key (GRUB polls the serial
// port), so counts include the few milliseconds between the menu and the stop. Medians of --runs runs; the VMMs
// interleave. Each run boots a private copy of the image (a VM locks its disk images).
//
// Where the reset vector is, in time: Partita traces (PARTITA_TRACE=1) "entering the guest" in ms since its own
// process start, counted here as ms since the spawn (so Partita's fork/exec is charged to the firmware: against
// us). QEMU starts paused (-S) and is told to run over QMP; the firmware is timed from QMP's reply to `cont`,
// which QEMU sends once its vCPUs run again (so QMP's latency is not charged to QEMU's firmware: in its favour).
//
// Without /dev/kvm nothing here is comparable: Partita cannot run at all, and QEMU runs only with --tcg, under
// TCG (its own emulator, no KVM exits), labelled as such.
import { spawn, spawnSync } from 'node:child_process';
import { createReadStream, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { clearTimeout, setTimeout } from 'node:timers';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from 'node:net';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '1' },
    paths: { type: 'string', default: 'atapi-cd,ahci-disk,virtio-blk' },
    tcg: { type: 'boolean', default: false },
    'no-qemu-exits': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '600' },
    json: { type: 'string' },
  },
});
const RUNS = Number(args.runs);
const GUARD_MS = Number(args.timeout) * 1000;
if (!(RUNS >= 1) || !(GUARD_MS > 0)) {
  console.error('firmware-boot: --runs must be at least 1 and --timeout positive');
  process.exit(2);
}

const SEABIOS = '/usr/share/seabios/bios-256k.bin';
const GRUB_ISO = join(root, 'build/images/grub.iso');
const QEMU = 'qemu-system-x86_64';
const MENU = 'Partita test: second entry';
const haveKvm = existsSync('/dev/kvm');
const haveQemu = spawnSync(QEMU, ['--version'], { stdio: 'ignore' }).status === 0;
for (const [ok, what] of [
  [existsSync(SEABIOS), `no SeaBIOS (${SEABIOS}): apt-get install seabios`],
  [existsSync(GRUB_ISO), `no ${GRUB_ISO}: apt-get install grub-pc-bin xorriso mtools; node scripts/build-images.mjs`],
  [existsSync(join(root, 'dist/main.js')), 'not built: npm run build'],
]) {
  if (!ok) {
    console.error(`firmware-boot: ${what}`);
    process.exit(2);
  }
}
const { exitReasonName } = await import('../dist/src/kvm/abi.js');

/** The boot paths, as firmware-pc.test.ts runs them (same device models and boot orders on both VMMs). */
const BOOT_PATHS = {
  'atapi-cd': {
    partita: (image) => ['--cdrom', image, '--boot', 'order=cd'],
    qemu: (image) => [
      '-device',
      'ahci,id=ahci',
      '-drive',
      `if=none,id=cd,media=cdrom,readonly=on,file=${image}`,
      '-device',
      'ide-cd,drive=cd,bus=ahci.0',
      '-boot',
      'order=d',
    ],
  },
  'ahci-disk': {
    partita: (image) => ['--disk', `${image},if=ahci,readonly`, '--boot', 'order=disk'],
    // QEMU's ide-hd refuses a read-only drive; the private copy makes a writable one harmless.
    qemu: (image) => [
      '-device',
      'ahci,id=ahci',
      '-drive',
      `if=none,id=hd,format=raw,file=${image}`,
      '-device',
      'ide-hd,drive=hd,bus=ahci.0',
      '-boot',
      'order=c',
    ],
  },
  'virtio-blk': {
    partita: (image) => ['--disk', `${image},readonly`, '--boot', 'order=disk'],
    qemu: (image) => ['-drive', `if=virtio,format=raw,readonly=on,file=${image}`, '-boot', 'order=c'],
  },
};
const paths = args.paths.split(',').filter(Boolean);
for (const p of paths) {
  if (!BOOT_PATHS[p]) {
    console.error(`firmware-boot: unknown boot path '${p}' (known: ${Object.keys(BOOT_PATHS).join(', ')})`);
    process.exit(2);
  }
}

const qemuAccel = !haveQemu ? undefined : haveKvm ? 'kvm' : args.tcg ? 'tcg' : undefined;
const partitaArgv = (bootArgs) => [
  process.execPath,
  join(root, 'bin/partita.js'),
  'run',
  '--bios',
  '--memory',
  '256M',
  ...bootArgs,
  '--stats',
  '--serial',
  'stdio',
];
const qemuArgv = (bootArgs, trace, qmp) => [
  QEMU,
  ...(qmp ? ['-S', '-qmp', `unix:${qmp},server=on,wait=off`] : []),
  '-M',
  'pc',
  ...(qemuAccel === 'kvm' ? ['-enable-kvm'] : ['-accel', 'tcg']),
  '-m',
  '256',
  '-nodefaults',
  '-no-user-config',
  '-vga',
  'std',
  '-display',
  'none',
  '-serial',
  'stdio',
  '-bios',
  SEABIOS,
  ...(trace ? ['-trace', `enable=kvm_run_exit,file=${trace}`] : []),
  ...bootArgs,
];

// ---- processes and clean-up ----------------------------------------------------------------------------------

const live = new Set();
const work = mkdtempSync(join(tmpdir(), 'partita-fwbench-'));
function cleanUp() {
  for (const child of live) child.kill('SIGKILL');
  rmSync(work, { recursive: true, force: true });
}
process.on('exit', cleanUp);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    cleanUp();
    process.exit(128 + ({ SIGHUP: 1, SIGINT: 2, SIGTERM: 15 }[sig] ?? 0));
  });
}

/** Partita's PARTITA_TRACE=1 line for the first guest entry: ms since its process started. */
function partitaGuestEntry(stderr) {
  const m = /partita: ([\d.]+) ms vCPUs ready, entering the guest/.exec(stderr);
  return m ? Number(m[1]) : undefined;
}

/**
 * QEMU started with -S: waits for its QMP socket, negotiates, sends `cont`; resolves the time (performance.now())
 * of QMP's reply, or undefined if QMP never answered (the run then has no reset-vector time).
 */
async function qmpCont(path, deadline) {
  while (performance.now() < deadline) {
    const t = await new Promise((resolve) => {
      const sock = connect(path);
      let buf = '';
      let step = 0;
      sock.setEncoding('utf8');
      sock.on('error', () => resolve(undefined));
      sock.on('data', (d) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const msg = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (step === 0 && msg.QMP) {
            step = 1;
            sock.write('{"execute":"qmp_capabilities"}\n');
          } else if (step === 1 && 'return' in msg) {
            step = 2;
            sock.write('{"execute":"cont"}\n');
          } else if (step === 2 && 'return' in msg) {
            resolve(performance.now());
            sock.end();
          } else if ('error' in msg) {
            resolve(undefined);
            sock.destroy();
          }
        }
      });
    });
    if (t !== undefined) return t;
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}

/**
 * Spawns argv and waits for the GRUB menu on its stdout; then SIGTERM (SIGKILL 30 s later if it is still there).
 * Resolves { ms, resetMs, stdout, stderr, status, hung } once the process has gone; `ms` is spawn to menu,
 * `resetMs` spawn to the reset vector (Partita: from its trace; QEMU: `qmp`, its QMP socket, after -S).
 */
function boot(argv, { env, qmp } = {}) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), {
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(env ? { env: { ...process.env, ...env } } : {}),
    });
    let resetAt;
    if (qmp) void qmpCont(qmp, t0 + GUARD_MS).then((t) => (resetAt = t));
    live.add(child);
    let stdout = '';
    let stderr = '';
    let ms;
    let hung = false;
    let killer;
    const guard = setTimeout(() => {
      hung = true;
      child.kill('SIGKILL');
    }, GUARD_MS);
    child.stdout.setEncoding('latin1');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      // Keep only a tail: the marker is short, and GRUB's menu redraws are not.
      stdout = (stdout + d).slice(-65536);
      if (ms === undefined && stdout.includes(MENU)) {
        ms = performance.now() - t0;
        child.kill('SIGTERM');
        killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      }
    });
    child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-65536)));
    child.on('error', (e) => (stderr += `\nspawn: ${e.message}`));
    child.on('close', (status, signal) => {
      clearTimeout(guard);
      clearTimeout(killer);
      live.delete(child);
      const entry = qmp ? (resetAt === undefined ? undefined : resetAt - t0) : partitaGuestEntry(stderr);
      resolve({ ms, resetMs: ms === undefined ? undefined : entry, stdout, stderr, status: status ?? signal, hung });
    });
  });
}

/** Partita's `--stats` line: "partita: exits to userspace: N port I/O, M MMIO, K other". */
function partitaExits(stderr) {
  const m = /exits to userspace: (\d+) port I\/O, (\d+) MMIO, (\d+) other/.exec(stderr);
  return m ? { pio: Number(m[1]), mmio: Number(m[2]), other: Number(m[3]) } : undefined;
}

/** QEMU's kvm_run_exit trace ("kvm_run_exit cpu_index 0, reason 2", perhaps after "pid@time:"), counted. */
async function qemuExits(file) {
  if (!existsSync(file)) return undefined;
  const byReason = new Map();
  const lines = createInterface({ input: createReadStream(file, 'latin1'), crlfDelay: Infinity });
  for await (const line of lines) {
    const m = /kvm_run_exit cpu_index \d+, reason (\d+)/.exec(line);
    if (m) byReason.set(Number(m[1]), (byReason.get(Number(m[1])) ?? 0) + 1);
  }
  if (byReason.size === 0) return undefined; // a KVM boot always exits: the event did not fire
  const pio = byReason.get(2) ?? 0;
  const mmio = byReason.get(6) ?? 0;
  const others = [...byReason].filter(([r]) => r !== 2 && r !== 6);
  return {
    pio,
    mmio,
    other: others.reduce((n, [, c]) => n + c, 0),
    otherByReason: Object.fromEntries(others.map(([r, c]) => [exitReasonName(r).replace(/^KVM_EXIT_/, ''), c])),
  };
}

/** Reset vector → menu, when both ends were seen. */
const firmwareMs = (r) => (r.ms === undefined || r.resetMs === undefined ? undefined : r.ms - r.resetMs);

// ---- the runs ---------------------------------------------------------------------------------------------------

const NEEDS_KVM = 'needs /dev/kvm (not measured)';
const samples = {};
const failures = [];
for (const p of paths) samples[p] = { partita: [], qemu: [], qemuTraced: [] };
process.stderr.write(
  `firmware-boot: ${RUNS} run(s) x ${paths.join(', ')}; Partita ${haveKvm ? 'on KVM' : NEEDS_KVM}; ` +
    `QEMU ${!haveQemu ? 'not installed (apt-get install qemu-system-x86)' : qemuAccel ? `with ${qemuAccel.toUpperCase()}` : `${NEEDS_KVM} (--tcg runs it under TCG, not comparable)`}\n`,
);
let n = 0;
for (let run = 0; run < RUNS; run++) {
  for (const p of paths) {
    const path = BOOT_PATHS[p];
    const dir = join(work, `run-${n++}`);
    const image = join(dir, 'grub.iso');
    const fresh = () => {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
      copyFileSync(GRUB_ISO, image);
    };
    const record = (who, r) => {
      if (r.ms === undefined)
        failures.push(
          `${p} ${who}: ${r.hung ? `no menu after ${GUARD_MS / 1000} s (killed)` : `ended (${r.status}) without the menu`}; ` +
            `stderr: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}`,
        );
    };
    if (haveKvm) {
      fresh();
      const r = await boot(partitaArgv(path.partita(image)), { env: { PARTITA_TRACE: '1' } });
      record('partita', r);
      samples[p].partita.push({ ms: r.ms, firmwareMs: firmwareMs(r), exits: partitaExits(r.stderr) });
    }
    if (qemuAccel) {
      fresh();
      const r = await boot(qemuArgv(path.qemu(image), undefined, join(dir, 'qmp.sock')), {
        qmp: join(dir, 'qmp.sock'),
      });
      record('qemu', r);
      samples[p].qemu.push({ ms: r.ms, firmwareMs: firmwareMs(r) });
      if (qemuAccel === 'kvm' && !args['no-qemu-exits']) {
        fresh();
        const trace = join(dir, 'qemu-trace.log');
        const t = await boot(qemuArgv(path.qemu(image), trace));
        record('qemu (traced)', t);
        samples[p].qemuTraced.push({ ms: t.ms, exits: await qemuExits(trace) });
      }
    }
    rmSync(dir, { recursive: true, force: true });
    process.stderr.write(`  run ${run + 1}/${RUNS} ${p} done\n`);
  }
}

// ---- the table --------------------------------------------------------------------------------------------------

const median = (xs) => {
  const v = xs.filter((x) => x !== undefined).sort((a, b) => a - b);
  return v.length ? v[Math.floor(v.length / 2)] : undefined;
};
const medianExits = (list) => {
  const e = list.map((s) => s.exits).filter(Boolean);
  if (!e.length) return undefined;
  const others = {};
  for (const x of e)
    for (const k of Object.keys(x.otherByReason ?? {})) others[k] = median(e.map((y) => y.otherByReason?.[k] ?? 0));
  return {
    pio: median(e.map((x) => x.pio)),
    mmio: median(e.map((x) => x.mmio)),
    other: median(e.map((x) => x.other)),
    ...(Object.keys(others).length ? { otherByReason: others } : {}),
  };
};

const results = {};
for (const p of paths) {
  const s = samples[p];
  const qemuExitNote = !qemuAccel
    ? undefined
    : qemuAccel === 'tcg'
      ? 'n/a (TCG: no KVM exits)'
      : args['no-qemu-exits']
        ? 'n/a (--no-qemu-exits)'
        : undefined;
  results[p] = {
    partita: haveKvm
      ? {
          ms: median(s.partita.map((x) => x.ms)),
          firmwareMs: median(s.partita.map((x) => x.firmwareMs)),
          exits: medianExits(s.partita),
        }
      : { note: NEEDS_KVM },
    qemu: !haveQemu
      ? { note: 'QEMU not installed' }
      : !qemuAccel
        ? { note: `${NEEDS_KVM}; --tcg runs it under TCG` }
        : {
            accel: qemuAccel,
            ms: median(s.qemu.map((x) => x.ms)),
            firmwareMs: median(s.qemu.map((x) => x.firmwareMs)),
            exits: medianExits(s.qemuTraced),
            exitsNote:
              qemuExitNote ?? (s.qemuTraced.some((x) => x.exits) ? undefined : 'n/a (no kvm_run_exit in the trace)'),
            tracedMs: median(s.qemuTraced.map((x) => x.ms)),
          },
  };
}

const pad = (v, w) => String(v).padStart(w);
const f = (x, d = 0) => (x === undefined ? '-' : x.toFixed(d));
const lines = [];
const LABEL = qemuAccel === 'tcg' ? 26 : 10;
lines.push(
  `SeaBIOS → GRUB menu on serial (${GRUB_ISO.replace(root + '/', '')}), 256 MiB, ` +
    `median of ${RUNS} run${RUNS > 1 ? 's' : ''}; exits to userspace per boot`,
);
lines.push(
  `${'path'.padEnd(11)} ${'VMM'.padEnd(LABEL)} ${pad('reset→menu', 11)} ${pad('spawn→menu', 11)} ${pad('port I/O', 9)} ${pad('MMIO', 8)} ${pad('other', 7)} ${pad('total', 9)}`,
);
for (const p of paths) {
  for (const who of ['partita', 'qemu']) {
    const r = results[p][who];
    const label = who === 'qemu' && r.accel ? `qemu (${r.accel === 'tcg' ? 'TCG, not comparable' : 'KVM'})` : who;
    if (r.note) {
      lines.push(`${p.padEnd(11)} ${label.padEnd(LABEL)} ${r.note}`);
      continue;
    }
    const e = r.exits;
    const exits = e
      ? `${pad(e.pio, 9)} ${pad(e.mmio, 8)} ${pad(e.other, 7)} ${pad(e.pio + e.mmio + e.other, 9)}`
      : `${pad(r.exitsNote ?? 'n/a', 9)}`;
    lines.push(`${p.padEnd(11)} ${label.padEnd(LABEL)} ${pad(f(r.firmwareMs, 1), 11)} ${pad(f(r.ms, 1), 11)} ${exits}`);
  }
}
const detail = paths
  .map((p) => [p, results[p].qemu.exits?.otherByReason])
  .filter(([, o]) => o && Object.keys(o).length)
  .map(
    ([p, o]) =>
      `${p}: ${Object.entries(o)
        .map(([k, v]) => `${v} ${k}`)
        .join(', ')}`,
  );
if (detail.length) lines.push(`QEMU's other exits: ${detail.join('; ')}`);
const traced = paths.filter((p) => results[p].qemu.tracedMs !== undefined);
if (traced.length)
  lines.push(
    `(QEMU's exits come from a second, traced run: ${traced.map((p) => `${p} ${f(results[p].qemu.tracedMs, 1)} ms`).join(', ')})`,
  );

const comparable = paths.filter((p) => results[p].partita.ms !== undefined && results[p].qemu.accel === 'kvm');
if (comparable.length) {
  lines.push('', 'Partita/QEMU (same run):');
  for (const p of comparable) {
    const P = results[p].partita;
    const Q = results[p].qemu;
    const ratio = (a, b) => (a === undefined || !b ? '-' : `${(a / b).toFixed(2)}x`);
    const total = (e) => (e ? e.pio + e.mmio + e.other : undefined);
    lines.push(
      `  ${p.padEnd(11)} reset→menu ${ratio(P.firmwareMs, Q.firmwareMs)}   spawn→menu ${ratio(P.ms, Q.ms)}   port I/O exits ${ratio(P.exits?.pio, Q.exits?.pio)}   ` +
        `MMIO exits ${ratio(P.exits?.mmio, Q.exits?.mmio)}   all exits ${ratio(total(P.exits), total(Q.exits))}`,
    );
  }
  lines.push('', 'Target (issue 10):');
  for (const p of comparable) {
    const P = results[p].partita;
    const Q = results[p].qemu;
    const [a, b] = [P.firmwareMs, Q.firmwareMs];
    const verdict = a === undefined || b === undefined ? 'n/a ' : a <= b ? 'met ' : 'MISS';
    lines.push(`  [${verdict}] ${p}: reset vector → GRUB menu ≤ QEMU's time: ${f(a, 1)} vs ${f(b, 1)} ms`);
  }
} else {
  lines.push('', 'Target (issue 10): not checked here: Partita and QEMU need /dev/kvm for a comparable run.');
}
if (failures.length) lines.push('', 'FAILED RUNS:', ...failures.map((x) => `  ${x}`));
console.log(lines.join('\n'));
if (args.json)
  writeFileSync(
    args.json,
    JSON.stringify({ runs: RUNS, kvm: haveKvm, qemuAccel, results, samples, failures }, null, 2),
  );
process.exitCode = failures.length ? 1 : 0;
