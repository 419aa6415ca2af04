// The Partita web UI: the VM library, the create wizard and one page per VM (screen, console, settings), served
// by `partita serve` at `/` and talking to it through docs/api.md's REST and WebSocket routes.
import { render } from 'preact';
import { CreateWizard } from './components/CreateWizard';
import { VmLibrary } from './components/VmLibrary';
import { VmPage } from './components/VmPage';
import { Icon } from './components/Icon';
import { Notices } from './notices';
import { navigate, useLibrary, useRoute } from './store';
import './styles.css';

function App() {
  const library = useLibrary();
  const route = useRoute();
  const status = { live: 'Live', connecting: 'Connecting…', offline: 'Daemon unreachable' }[library.connection];
  return (
    <>
      <header class="topbar">
        <a class="brand" href="#/" aria-label="Partita: the VM library">
          <span class="brand-mark" aria-hidden="true">
            P
          </span>
          Partita
        </a>
        <span
          class={`connection connection-${library.connection}`}
          data-testid="connection"
          data-connection={library.connection}
          title="Live updates from the daemon"
        >
          <span class="badge-dot" aria-hidden="true" />
          {status}
        </span>
        <span class="spacer" />
        <button
          type="button"
          class="button button-primary"
          data-testid="new-vm"
          onClick={() => navigate({ page: 'new' })}
        >
          <Icon name="plus" /> New VM
        </button>
      </header>
      <main class="content">
        {route.page === 'library' && <VmLibrary library={library} />}
        {route.page === 'new' && <CreateWizard onCreated={library.put} />}
        {route.page === 'vm' && <VmPage key={route.name} name={route.name} tab={route.tab} library={library} />}
      </main>
      <Notices />
    </>
  );
}

render(<App />, document.getElementById('app')!);
