// The VM library as the page sees it: one list from GET /api/vms, kept live by the /api/events WebSocket
// (state changes land at once; created/deleted and every state change also refetch the list, so pids, exit
// statuses and messages stay exact). The socket reconnects with back-off when the daemon restarts.
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, ApiError, type VmEvent, type VmRecord } from './api';

export type Connection = 'connecting' | 'live' | 'offline';

export interface Library {
  vms: VmRecord[] | null;
  error: ApiError | null;
  connection: Connection;
  refresh(): void;
  /** Put a record the API just answered with into the list (after start/stop/patch…) at once, then refetch. */
  put(record: VmRecord): void;
}

export function useLibrary(): Library {
  const [vms, setVms] = useState<VmRecord[] | null>(null);
  const [error, setError] = useState<ApiError | null>(null);
  const [connection, setConnection] = useState<Connection>('connecting');
  const generation = useRef(0);

  const refresh = () => {
    const mine = ++generation.current;
    api.list().then(
      (list) => {
        if (mine !== generation.current) return; // an older answer arriving late
        setVms([...list].sort((a, b) => a.name.localeCompare(b.name)));
        setError(null);
      },
      (e: ApiError) => mine === generation.current && setError(e),
    );
  };

  const put = (record: VmRecord) => {
    setVms((list) => {
      if (!list) return list;
      const others = list.filter((v) => v.name !== record.name);
      return [...others, record].sort((a, b) => a.name.localeCompare(b.name));
    });
    // An answer can arrive after a later state event on the events socket: the refetch has the last word.
    refresh();
  };

  useEffect(() => {
    let socket: WebSocket | null = null;
    let retry: ReturnType<typeof setTimeout> | undefined;
    let delay = 500;
    let closed = false;

    const connect = () => {
      setConnection('connecting');
      socket = new WebSocket(api.eventsUrl());
      socket.onopen = () => {
        delay = 500;
        setConnection('live');
        refresh(); // whatever happened while we were away
      };
      socket.onmessage = (message) => {
        let event: VmEvent;
        try {
          event = JSON.parse(String(message.data)) as VmEvent;
        } catch {
          return;
        }
        if (event.type === 'state') {
          setVms((list) =>
            list
              ? list.map((v) =>
                  v.name !== event.name
                    ? v
                    : {
                        ...v,
                        state: event.state,
                        message: event.message,
                        // A VM that is down has no VMM process (the refetch brings the exact record).
                        pid: event.state === 'stopped' || event.state === 'crashed' ? undefined : v.pid,
                      },
                )
              : list,
          );
        }
        refresh();
      };
      socket.onclose = () => {
        if (closed) return;
        setConnection('offline');
        retry = setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10_000);
      };
    };
    connect();
    return () => {
      closed = true;
      clearTimeout(retry);
      socket?.close();
    };
  }, []);

  return { vms, error, connection, refresh, put };
}

/** The current route from the location hash: `#/`, `#/new`, `#/vm/<name>/<tab>`. */
export type Route = { page: 'library' } | { page: 'new' } | { page: 'vm'; name: string; tab?: string };

function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'new') return { page: 'new' };
  if (parts[0] === 'vm' && parts[1]) return { page: 'vm', name: parts[1], tab: parts[2] };
  return { page: 'library' };
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', onChange);
    return () => removeEventListener('hashchange', onChange);
  }, []);
  return route;
}

export function navigate(route: Route): void {
  if (route.page === 'library') location.hash = '#/';
  else if (route.page === 'new') location.hash = '#/new';
  else location.hash = `#/vm/${encodeURIComponent(route.name)}${route.tab ? `/${route.tab}` : ''}`;
}
