// The daemon verbs' names and help, apart from their code (verbs.ts), so `partita --help` and the command
// dispatch do not load the daemon client.
export const DAEMON_VERB_NAMES: readonly string[] = [
  'list',
  'create',
  'start',
  'stop',
  'pause',
  'resume',
  'set',
  'console',
  'capture',
  'delete',
  'status',
];

export const VERB_USAGE = `  serve        run the daemon: the VM library and its API (partita serve --help)
  list         list VMs (-a: all, also stopped ones; --json)
  create       create a VM: create NAME [--os linux|windows|other] [--cpus N] [--memory SIZE] [--disk SIZE]
               [--cdrom ISO] [--kernel FILE] [--initrd FILE] [--cmdline STR] [--firmware bios|uefi|FILE]
  start        start a VM (start NAME [--headless])
  stop         stop a VM (stop NAME [--kill])
  pause        pause a VM's vCPUs / resume: let them run again
  resume
  set          change a stopped VM: set NAME [--cpus N] [--memory SIZE] [--device-add DEV]… [--device-del INDEX]…
               (DEV: disk=PATH[,readonly]…, net=user|tap=NAME…, rng, console=PATH, or a JSON device entry)
  console      attach to a VM's serial console (Ctrl-] or Ctrl-A x leaves; the VM keeps running)
  capture      save a screenshot: capture NAME out.png
  delete       delete a stopped VM and its disks (--keep-disks keeps them)
  status       the daemon's status, or one VM's (status [NAME])
Verbs talk to the daemon on --socket PATH (default ${'$XDG_RUNTIME_DIR/partita/partita.sock'}).`;
