// A stand-in for `partita run` that needs no /dev/kvm, for the daemon's tests: it takes the flags the supervisor
// passes (--spec, --control, --serial unix:, --serial-log, --status-file) and serves the real control channel
// and serial socket code (src/vmm/control-server.ts, serial-socket.ts) on a real VmControl. The "guest" writes
// a greeting to the serial log, echoes what it is sent, and stops when told to, like a VM would.
//   FAKE_VMM_EXIT=N     exit with status N right after start (a VMM that fails)
//   FAKE_VMM_SLOW_MS=N  wait N ms before serving the control channel (a VM being built)
// `fake-vmm.js vmm-standby --standby-id ID` is a warm VMM speaking the real standby protocol
// (src/cli/vmm-standby.ts: the same code takes the hand-off), then the fake VMM of the arguments it was handed.
// Its environment is the one it was spawned with (before the hand-off), as a real standby's.
//   FAKE_VMM_STANDBY_BROKEN=1  a standby that never answers a hand-off (the daemon must fall back to cold)
import { appendFileSync, fstatSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { VmControl } from '../../src/vmm/control.js';
import { serveControl } from '../../src/vmm/control-server.js';
import { serveSerialSocket } from '../../src/vmm/serial-socket.js';
import { awaitHandOff } from '../../src/cli/vmm-standby.js';

let argv = process.argv.slice(2);
if (argv[0] === 'vmm-standby') {
  // Broken: it says ready, then hangs (main thread blocked) without ever reading the hand-off.
  if (process.env.FAKE_VMM_STANDBY_BROKEN === '1') {
    writeSync(3, 'ready\n');
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
  }
  argv = await awaitHandOff();
}
const { values } = parseArgs({
  args: argv.filter((a) => a !== 'run'),
  options: {
    spec: { type: 'string' },
    control: { type: 'string' },
    serial: { type: 'string' },
    'serial-log': { type: 'string' },
    'status-file': { type: 'string' },
    vnc: { type: 'string' },
  },
});
// `node --test dist/test/` also loads this file, without arguments: there is no VM to fake then.
if (values.spec === undefined) process.exit(0);

const spec = JSON.parse(readFileSync(values.spec!, 'utf8')) as { cpus: number };
const exitNow = process.env.FAKE_VMM_EXIT;
if (exitNow !== undefined) {
  process.stderr.write(`fake-vmm: failing on purpose with status ${exitNow}\n`);
  process.exit(Number(exitNow));
}

const control = new VmControl();
const log = values['serial-log']!;
const logFd = openSync(log, 'a');
const logStart = fstatSync(logFd).size;
const hub = serveSerialSocket(values.serial!.slice('unix:'.length), log, logStart);
appendFileSync(log, `hello from the fake guest with ${spec.cpus} vCPUs\n`);
hub.input.on('data', (bytes: Buffer) => appendFileSync(log, `echo: ${bytes.toString('utf8')}\n`));

setTimeout(() => serveControl(values.control!, control), Number(process.env.FAKE_VMM_SLOW_MS ?? 0));

const finish = (status: number, kind: string, message: string): void => {
  if (values['status-file']) writeFileSync(values['status-file'], JSON.stringify({ status, kind, message }) + '\n');
  process.exit(status);
};
setInterval(() => {
  if (control.stopping) {
    const r = control.reason();
    finish(r.status, r.kind, r.message);
  }
}, 20);
process.on('SIGTERM', () => finish(128 + 15, 'signal', 'stopped by host signal 15'));
