// The VM's serial console (COM1) in xterm.js over ws(s)://host/api/vms/<name>/console: binary frames both ways,
// guest output in, keyboard input out. Reconnects when the VM starts again; the terminal keeps its scrollback.
import { Terminal } from '@xterm/xterm';
import '@xterm/xterm/css/xterm.css';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, type VmRecord } from '../api';

type Link = 'idle' | 'connecting' | 'connected' | 'closed';

function terminalTheme() {
  const dark = matchMedia('(prefers-color-scheme: dark)').matches;
  return dark
    ? { background: '#0d1117', foreground: '#d6dde6', cursor: '#8fb3ff', selectionBackground: '#2d4a7a' }
    : { background: '#101418', foreground: '#e3e8ee', cursor: '#8fb3ff', selectionBackground: '#2d4a7a' };
}

export function Console({ vm }: { vm: VmRecord }) {
  const host = useRef<HTMLDivElement>(null);
  const term = useRef<Terminal | null>(null);
  const socket = useRef<WebSocket | null>(null);
  const [link, setLink] = useState<Link>('idle');
  const live = vm.state === 'running' || vm.state === 'paused';

  // One terminal for the page's life: keyboard input goes to whatever socket is open.
  useEffect(() => {
    if (!host.current) return;
    const t = new Terminal({
      convertEol: true, // guests that print a bare \n (test guests, early boot) still start a new line at column 0
      cursorBlink: true,
      fontFamily: 'ui-monospace, "JetBrains Mono", "DejaVu Sans Mono", Menlo, Consolas, monospace',
      fontSize: 14,
      scrollback: 5000,
      theme: terminalTheme(),
    });
    t.open(host.current);
    const encoder = new TextEncoder();
    const send = (bytes: Uint8Array) => {
      const s = socket.current;
      if (s && s.readyState === WebSocket.OPEN) s.send(bytes);
    };
    t.onData((data) => send(encoder.encode(data)));
    // Binary input (some mouse reports): one byte per char code.
    t.onBinary((data) => send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    const fit = () => fitTerminal(t, host.current);
    fit();
    const observer = new ResizeObserver(fit);
    observer.observe(host.current);
    term.current = t;
    t.focus();
    return () => {
      observer.disconnect();
      term.current = null;
      t.dispose();
    };
  }, []);

  // Connects while the VM runs; a socket the daemon closes (the VMM restarting, a console not ready yet) is
  // reopened after a short pause for as long as the VM is live.
  useEffect(() => {
    if (!live) {
      setLink('idle');
      return;
    }
    let current: WebSocket | null = null;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let done = false;
    const connect = () => {
      setLink('connecting');
      const s = new WebSocket(api.consoleUrl(vm.name));
      s.binaryType = 'arraybuffer';
      s.onopen = () => setLink('connected');
      s.onmessage = (m) => {
        const data = m.data instanceof ArrayBuffer ? new Uint8Array(m.data) : String(m.data);
        term.current?.write(data);
      };
      s.onclose = () => {
        if (socket.current === s) socket.current = null;
        if (done) return;
        setLink('closed');
        retry = setTimeout(connect, 1000);
      };
      current = s;
      socket.current = s;
    };
    connect();
    return () => {
      done = true;
      clearTimeout(retry);
      socket.current = null;
      current?.close();
    };
  }, [vm.name, live]);

  return (
    <div class="console-wrap">
      <div class="toolbar" role="toolbar" aria-label="Console controls">
        <span class="muted">Serial console (COM1)</span>
        <span class="toolbar-sep" />
        <button type="button" class="button small" onClick={() => term.current?.clear()} data-testid="console-clear">
          Clear
        </button>
        <span
          class={`link-state link-${link === 'closed' ? 'disconnected' : link}`}
          data-testid="console-link"
          data-link={link}
        >
          {link === 'connected'
            ? 'Connected'
            : link === 'connecting'
              ? 'Connecting…'
              : link === 'closed'
                ? 'Closed'
                : 'Not running'}
        </span>
      </div>
      <div
        class="console-host"
        ref={host}
        data-testid="console"
        onClick={() => term.current?.focus()}
        aria-label={`Serial console of ${vm.name}`}
      />
    </div>
  );
}

/** Columns and rows that fill the host element, from the rendered cell size (no fit addon needed). */
function fitTerminal(t: Terminal, el: HTMLElement | null): void {
  if (!el) return;
  const cell = el.querySelector('.xterm-rows > div') as HTMLElement | null;
  const measure = el.querySelector('.xterm-char-measure-element') as HTMLElement | null;
  // xterm measures with 32 'W's in one span.
  const width = (measure?.getBoundingClientRect().width ?? 0) / 32 || 8.4;
  const height = cell?.getBoundingClientRect().height || measure?.getBoundingClientRect().height || 17;
  const cols = Math.max(20, Math.floor((el.clientWidth - 16) / width));
  const rows = Math.max(5, Math.floor((el.clientHeight - 16) / height));
  if (cols !== t.cols || rows !== t.rows) t.resize(cols, rows);
}
