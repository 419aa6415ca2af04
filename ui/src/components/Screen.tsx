// The VM's screen: noVNC's RFB client over ws(s)://host/api/vms/<name>/vnc (RFB 3.8 in binary frames, with
// ?token= on a token-protected listener). Scaling fit/1:1, fullscreen, and a toolbar for the keys the browser or
// the host desktop would otherwise eat (Ctrl+Alt+Del, Ctrl+Alt+Fn, Alt+Tab, Print Screen, Escape), plus typing
// the clipboard as key presses (for guests without clipboard sharing: installers, consoles, BIOS setup).
import RFB from '@novnc/novnc';
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, type VmRecord } from '../api';
import { COMBOS, KEY, textToStrokes, type KeyStroke } from '../keys';
import { notifyError } from '../notices';
import { Icon } from './Icon';

/** The Keyboard Lock API (Chromium; not yet in TypeScript's DOM types). */
type NavigatorWithKeyboard = Navigator & { keyboard?: { lock?(keys?: string[]): Promise<void> } };

type Link = 'idle' | 'connecting' | 'connected' | 'disconnected';

export function Screen({ vm }: { vm: VmRecord }) {
  const wrap = useRef<HTMLDivElement>(null);
  const target = useRef<HTMLDivElement>(null);
  const rfb = useRef<RFB | null>(null);
  const [link, setLink] = useState<Link>('idle');
  const [reason, setReason] = useState('');
  const [fit, setFit] = useState(true);
  const [attempt, setAttempt] = useState(0);
  const [typing, setTyping] = useState(false);
  const [isFullscreen, setIsFullscreen] = useState(false);
  // Reconnects without a click after a lost connection (the display comes up a moment after the VM runs).
  const autoRetries = useRef(0);
  const live = vm.state === 'running' || vm.state === 'paused';

  useEffect(() => {
    if (!live || !target.current) {
      setLink('idle');
      return;
    }
    setLink('connecting');
    setReason('');
    let client: RFB;
    try {
      client = new RFB(target.current, api.vncUrl(vm.name), { shared: true });
    } catch (e) {
      setLink('disconnected');
      setReason((e as Error).message);
      return;
    }
    client.scaleViewport = fit;
    client.clipViewport = false;
    client.resizeSession = false;
    client.focusOnClick = true;
    client.background = 'transparent';
    let retry: ReturnType<typeof setTimeout> | undefined;
    let disposed = false;
    client.addEventListener('connect', () => {
      autoRetries.current = 0;
      setLink('connected');
    });
    client.addEventListener('disconnect', (e) => {
      if (disposed) return; // our own disconnect() on leaving the page or reconnecting
      const clean = (e as CustomEvent<{ clean: boolean }>).detail?.clean;
      setLink('disconnected');
      setReason(clean ? 'the connection was closed' : 'the connection was lost');
      if (autoRetries.current < 5) {
        autoRetries.current++;
        retry = setTimeout(() => setAttempt((n) => n + 1), 1000 * autoRetries.current);
      }
    });
    client.addEventListener('securityfailure', (e) =>
      setReason(`security failure: ${(e as CustomEvent<{ reason?: string }>).detail?.reason ?? 'refused'}`),
    );
    rfb.current = client;
    return () => {
      disposed = true;
      clearTimeout(retry);
      rfb.current = null;
      client.disconnect();
    };
    // `fit` is applied below without reconnecting.
  }, [vm.name, live, attempt]);

  useEffect(() => {
    if (rfb.current) rfb.current.scaleViewport = fit;
  }, [fit]);

  useEffect(() => {
    const onChange = () => setIsFullscreen(document.fullscreenElement === wrap.current && wrap.current !== null);
    document.addEventListener('fullscreenchange', onChange);
    return () => document.removeEventListener('fullscreenchange', onChange);
  }, []);

  const press = (keys: KeyStroke[]) => {
    const client = rfb.current;
    if (!client || link !== 'connected') return;
    for (const k of keys) client.sendKey(k.keysym, k.code, true);
    for (const k of [...keys].reverse()) client.sendKey(k.keysym, k.code, false);
    client.focus();
  };

  const typeText = (text: string) => {
    for (const { stroke, shift } of textToStrokes(text)) press(shift ? [KEY.shift, stroke] : [stroke]);
  };

  // Fullscreen takes the toolbar along (its keys stay reachable) and, where the browser has the Keyboard Lock API
  // (Chromium), captures Escape, Alt+Tab and the like for the guest while fullscreen lasts.
  const fullscreen = () => {
    const el = wrap.current;
    if (!el) return;
    if (document.fullscreenElement) void document.exitFullscreen();
    else
      el.requestFullscreen().then(
        () => (navigator as NavigatorWithKeyboard).keyboard?.lock?.().catch(() => undefined),
        (e: Error) => notifyError('Fullscreen refused', e),
      );
  };

  if (!vm.display)
    return (
      <div class="screen-placeholder" data-testid="screen-none">
        <p>This VM has no display. Its serial console is in the Console tab.</p>
      </div>
    );

  const connected = link === 'connected';
  return (
    <div class="screen-wrap" ref={wrap}>
      <div class="toolbar" role="toolbar" aria-label="Screen controls">
        <div class="segmented small" role="radiogroup" aria-label="Scaling">
          <button
            type="button"
            role="radio"
            aria-checked={fit}
            class={fit ? 'selected' : ''}
            data-testid="scale-fit"
            onClick={() => setFit(true)}
          >
            Fit
          </button>
          <button
            type="button"
            role="radio"
            aria-checked={!fit}
            class={!fit ? 'selected' : ''}
            data-testid="scale-1to1"
            onClick={() => setFit(false)}
          >
            1:1
          </button>
        </div>
        <button
          type="button"
          class="button small"
          onClick={fullscreen}
          data-testid="fullscreen"
          aria-pressed={isFullscreen}
        >
          <Icon name="fullscreen" /> {isFullscreen ? 'Exit fullscreen' : 'Fullscreen'}
        </button>
        <span class="toolbar-sep" />
        <button
          type="button"
          class="button small"
          data-testid="key-ctrl-alt-del"
          disabled={!connected}
          onClick={() => {
            rfb.current?.sendCtrlAltDel();
            rfb.current?.focus();
          }}
        >
          Ctrl+Alt+Del
        </button>
        <select
          class="small"
          aria-label="Send keys"
          data-testid="send-keys"
          disabled={!connected}
          value=""
          onChange={(e) => {
            const combo = COMBOS[e.currentTarget.value];
            e.currentTarget.value = '';
            if (combo) press(combo.keys);
          }}
        >
          <option value="">Send keys…</option>
          {Object.entries(COMBOS)
            .filter(([id]) => id !== 'ctrl-alt-del')
            .map(([id, combo]) => (
              <option key={id} value={id}>
                {combo.label}
              </option>
            ))}
        </select>
        <button
          type="button"
          class="button small"
          disabled={!connected}
          data-testid="type-clipboard"
          onClick={() => setTyping(true)}
        >
          <Icon name="keyboard" /> Type clipboard…
        </button>
        <span class={`link-state link-${link}`} data-testid="screen-link" data-link={link}>
          {link === 'connected'
            ? 'Connected'
            : link === 'connecting'
              ? 'Connecting…'
              : link === 'disconnected'
                ? 'Disconnected'
                : 'Not running'}
        </span>
      </div>
      <div class={`screen-frame ${fit ? 'fit' : 'actual'}`}>
        <div ref={target} class="screen-target" data-testid="screen" />
        {!connected && (
          <div class="screen-overlay">
            {!live ? (
              <p>The VM is {vm.state}. Start it to see its screen.</p>
            ) : link === 'disconnected' ? (
              <>
                <p>Screen disconnected: {reason}</p>
                <button
                  type="button"
                  class="button"
                  onClick={() => {
                    autoRetries.current = 0;
                    setAttempt((n) => n + 1);
                  }}
                >
                  Reconnect
                </button>
              </>
            ) : (
              <p>Connecting to the screen…</p>
            )}
          </div>
        )}
      </div>
      {typing && <TypeClipboardDialog onClose={() => setTyping(false)} onType={typeText} />}
    </div>
  );
}

/** Reads the clipboard when the browser allows it (secure contexts), else lets the user paste; then types it. */
function TypeClipboardDialog({ onClose, onType }: { onClose(): void; onType(text: string): void }) {
  const [text, setText] = useState('');
  useEffect(() => {
    navigator.clipboard?.readText().then(setText, () => undefined);
  }, []);
  return (
    <div class="dialog-backdrop" onClick={onClose}>
      <div
        class="dialog"
        role="dialog"
        aria-modal="true"
        aria-labelledby="type-title"
        onClick={(e) => e.stopPropagation()}
      >
        <h2 id="type-title">Type text into the VM</h2>
        <p class="muted">Each character is sent as a key press (US layout).</p>
        <textarea
          rows={5}
          value={text}
          autoFocus
          aria-label="Text to type"
          data-testid="type-text"
          onInput={(e) => setText(e.currentTarget.value)}
        />
        <div class="form-actions">
          <button type="button" class="button" onClick={onClose}>
            Cancel
          </button>
          <button
            type="button"
            class="button button-primary"
            data-testid="type-send"
            disabled={!text}
            onClick={() => {
              onType(text);
              onClose();
            }}
          >
            Type {text.length} characters
          </button>
        </div>
      </div>
    </div>
  );
}
