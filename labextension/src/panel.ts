/**
 * The Tunnels side panel: a form to open a tunnel and the list of every tunnel.
 *
 * Elements carry `data-testid` attributes (jt-*) for tests and stable class names.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { PageConfig } from '@jupyterlab/coreutils';
import { KernelSpec } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import {
  ApiError,
  IKernelSpec,
  IPrompt,
  ITunnel,
  answerPrompt,
  closeTunnel as deleteTunnel,
  listHosts,
  listKernels,
  listTunnels
} from './api';
import { duration, el, progress, resumeText } from './dom';
import { OpenForm } from './form';
import { IKernelsHost, KernelsSection } from './kernels';

/** How often the list is refreshed while the panel is visible, in ms (not while hidden). */
const POLL_MS = 1000;
/** ... while the server extension is missing. */
const MISSING_POLL_MS = 10000;

let questionCounter = 0;

/**
 * Whether this JupyterLab runs under JupyterHub (JupyterLab sets `hubPrefix` from the
 * server's `tornado_settings["hub_prefix"]`). A tunnel's URL is 127.0.0.1 of the machine
 * the server runs on, which the browser usually is not: no link is offered then.
 */
export function underHub(): boolean {
  return !!PageConfig.getOption('hubPrefix');
}

/** What replaces the "Open JupyterLab" link under a hub. */
export function hubNote(t: ITunnel, kernels: boolean): string {
  const hops = t.hops || [];
  const target = hops[hops.length - 1] || t.name;
  const where = t.local_port ? ` (127.0.0.1:${t.local_port})` : '';
  const instead = kernels ? `: use ${target}'s kernels here instead` : '';
  return (
    `${target}'s JupyterLab listens on the hub's machine${where}, ` +
    `not reachable from this browser${instead}`
  );
}

/**
 * Where the row's "Open JupyterLab" link goes: the remote JupyterLab served through this
 * server when it can be, else the tunnel's own URL (not under a hub: unreachable there).
 */
export function linkTarget(t: ITunnel, hub: boolean): string | null {
  if (t.served_url) {
    return t.served_url;
  }
  return hub ? null : t.url;
}

/** What the panel works with. */
export interface ITunnelPanelOptions {
  /** JupyterLab's kernelspecs (``app.serviceManager.kernelspecs``): reloaded after a
   * remote kernel's kernelspec is installed or removed. */
  kernelspecs?: KernelSpec.IManager | null;
}

/** Whether a tunnel carries a remote kernel that still runs (its own tunnel). */
export function carriesKernel(t: ITunnel): boolean {
  return !!t.kernel && !['failed', 'orphaned', 'closed'].includes(t.state);
}

/** The remote kernel a tunnel carries, as its kernelspec's name says it. */
function kernelLabel(t: ITunnel): string {
  const spec = t.kernel && typeof t.kernel.kernelspec === 'string' ? t.kernel.kernelspec : '';
  return spec || 'of a notebook';
}

/** The side panel. */
export class TunnelPanel extends Widget implements IKernelsHost {
  constructor(options: ITunnelPanelOptions = {}) {
    super();
    this.id = 'jupyter-tunnel-panel';
    this.addClass('jp-TunnelPanel');
    this.node.dataset.testid = 'jt-panel';
    this.title.caption = 'SSH tunnels to remote JupyterLabs';
    this._kernelspecManager = options.kernelspecs ?? null;
    // installed or removed elsewhere (the command line, another tab): the list follows
    this._kernelspecManager?.specsChanged.connect(this._onSpecsChanged, this);
    this._build();
  }

  dispose(): void {
    this._kernelspecManager?.specsChanged.disconnect(this._onSpecsChanged, this);
    super.dispose();
  }

  /** Reload JupyterLab's kernelspecs, then the panel's list of remote kernels' ones. */
  async specsChanged(): Promise<void> {
    if (this._kernelspecManager) {
      try {
        await this._kernelspecManager.refreshSpecs();
      } catch (error) {
        console.warn('jupyter-tunnel: cannot reload the kernelspecs:', error);
      }
    }
    await this._loadKernels();
  }

  /** Put the cursor in the Target field (once the panel is shown and the palette gone). */
  focusTarget(): void {
    for (const delay of [0, 50, 200]) {
      window.setTimeout(() => {
        if (this.isVisible && document.activeElement !== this._form.target) {
          this._form.focusTarget();
        }
      }, delay);
    }
  }

  /** The tunnels as last listed. */
  get tunnels(): ITunnel[] {
    return this._tunnels;
  }

  /** Refresh the list now. */
  async refresh(): Promise<void> {
    // a poll and a refresh after an action may overlap: never show an older list over a
    // newer one (it would bring back a question already answered)
    const seq = ++this._sent;
    try {
      const reply = await listTunnels();
      if (seq < this._shown) {
        return;
      }
      this._shown = seq;
      if (reply.serverTime !== null) {
        this._skew = reply.serverTime - Date.now() / 1000;
      }
      this._setMissing(null);
      this._tunnels = reply.data;
      this._render();
      // a target newly ready: its kernelspecs may have been installed meanwhile
      const ready = this._tunnels
        .filter(t => t.state === 'ready')
        .map(t => t.target)
        .sort()
        .join('\n');
      if (ready !== this._readyTargets) {
        this._readyTargets = ready;
        if (ready) {
          void this._loadKernels();
        }
      }
    } catch (error) {
      if (seq < this._shown) {
        return;
      }
      const e = error as ApiError;
      if (e.missing) {
        this._setMissing(e.message);
      } else {
        this._listError.textContent = `Cannot list the tunnels: ${e.message}`;
      }
      return;
    }
    this._listError.textContent = '';
  }

  /**
   * Close, after asking first when the tunnel carries a live remote kernel: closing it
   * cuts the kernel off from its notebook (shutting the kernel down closes it anyway).
   */
  private async _closeClicked(name: string): Promise<void> {
    const t = this._tunnels.find(x => x.name === name);
    if (t && carriesKernel(t)) {
      const answer = await showDialog({
        title: `Close ${name}?`,
        body:
          `It carries the remote kernel ${kernelLabel(t)}: closing it cuts that kernel off ` +
          'from its notebook. Shutting the kernel down (Kernel › Shut Down Kernel) closes ' +
          'this tunnel too.',
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Close anyway' })]
      });
      if (!answer.button.accept) {
        return;
      }
    }
    await this.closeTunnel(name).catch(() => undefined);
  }

  /** Close one tunnel by name; reports the error in its row. */
  async closeTunnel(name: string): Promise<void> {
    const row = this._rows.get(name);
    const button = row?.querySelector('[data-testid="jt-close"]') as HTMLButtonElement | null;
    if (button) {
      button.disabled = true;
    }
    this._closeErrors.delete(name);
    try {
      await deleteTunnel(name);
    } catch (error) {
      this._closeErrors.set(name, `Cannot close it: ${(error as Error).message}`);
      throw error;
    } finally {
      if (button) {
        button.disabled = false;
      }
      await this.refresh();
    }
  }

  protected onAfterShow(): void {
    if (!this._hostsLoaded) {
      this._hostsLoaded = true;
      void this._loadHosts();
    }
    this._readyTargets = ''; // the kernelspecs are read again with the next list
    this._schedule(0);
  }

  protected onAfterHide(): void {
    window.clearTimeout(this._timer);
  }

  protected onBeforeDetach(): void {
    window.clearTimeout(this._timer);
  }

  /** Refresh after ``delay`` ms, then keep polling while the panel is visible. */
  private _schedule(delay: number): void {
    window.clearTimeout(this._timer);
    this._timer = window.setTimeout(async () => {
      if (this.isDisposed || !this.isVisible) {
        return;
      }
      await this.refresh();
      if (this.isVisible) {
        this._schedule(this._missing === null ? POLL_MS : MISSING_POLL_MS);
      }
    }, delay);
  }

  private async _loadHosts(): Promise<void> {
    try {
      const hosts = await listHosts();
      this._form.setHosts(hosts);
    } catch (error) {
      // no suggestions; the form still works with typed host names
      console.warn('jupyter-tunnel: no host suggestions:', error);
    }
  }

  /** The kernelspecs of ours (all targets); the rows show those of their target. */
  private async _loadKernels(): Promise<void> {
    const seq = ++this._kernelsSent;
    try {
      const { installed } = await listKernels();
      if (seq < this._kernelsShown) {
        return; // an older answer than the one shown
      }
      this._kernelsShown = seq;
      this._kernelspecs = installed;
      this._render();
    } catch (error) {
      console.warn('jupyter-tunnel: cannot list the remote kernels:', error);
    }
  }

  private _onSpecsChanged(): void {
    void this._loadKernels();
  }

  private _setMissing(message: string | null): void {
    if (this._missing !== null && message === null) {
      void this._loadHosts(); // the server extension is back
    }
    this._missing = message;
    this._list.hidden = message !== null;
    if (message !== null) {
      this._empty.hidden = true;
    }
    this._missingNote.hidden = message === null;
    this._missingNote.textContent = message ?? '';
    this._form.node.hidden = message !== null;
  }

  private _build(): void {
    const header = el('header', { class: 'jp-TunnelPanel-header' });
    header.append(el('h2', {}, 'Tunnels'));
    this._missingNote = el('div', {
      class: 'jp-TunnelPanel-missing',
      'data-testid': 'jt-missing',
      role: 'alert'
    });
    this._missingNote.hidden = true;
    this._form = new OpenForm(() => void this.refresh());
    this._list = el('ul', { class: 'jp-TunnelPanel-list', 'data-testid': 'jt-list' });
    this._empty = el(
      'p',
      { class: 'jp-TunnelPanel-empty', 'data-testid': 'jt-empty' },
      'No tunnels.'
    );
    this._listError = el('div', { class: 'jp-TunnelPanel-error', role: 'alert' });
    this.node.append(
      header,
      this._missingNote,
      this._form.node,
      this._listError,
      this._list,
      this._empty
    );
  }

  private _render(): void {
    const seen = new Set<string>();
    let index = 0;
    for (const tunnel of this._tunnels) {
      seen.add(tunnel.name);
      let row = this._rows.get(tunnel.name);
      if (!row) {
        row = this._newRow(tunnel.name);
        this._rows.set(tunnel.name, row);
      }
      this._fill(row, tunnel);
      if (this._list.children[index] !== row) {
        // keeps the server's (sorted) order; moving a row only when needed keeps its focus
        this._list.insertBefore(row, this._list.children[index] ?? null);
      }
      index += 1;
    }
    for (const [name, row] of this._rows) {
      if (!seen.has(name)) {
        row.remove();
        this._rows.delete(name);
        this._closeErrors.delete(name);
        this._kernelSections.delete(name);
      }
    }
    this._empty.hidden = this._tunnels.length > 0;
  }

  private _newRow(name: string): HTMLLIElement {
    const row = el('li', { class: 'jp-TunnelPanel-item', 'data-testid': 'jt-tunnel' });
    row.dataset.name = name;
    const top = el('div', { class: 'jp-TunnelPanel-top' });
    const close = el('button', {
      type: 'button',
      class: 'jp-mod-styled jp-TunnelPanel-close',
      'data-testid': 'jt-close'
    });
    close.addEventListener('click', () => {
      void this._closeClicked(name);
    });
    top.append(
      el('span', { class: 'jp-TunnelPanel-name', 'data-testid': 'jt-name' }, name),
      el('span', { class: 'jp-TunnelPanel-badge', 'data-testid': 'jt-state' }),
      close
    );
    const link = this._newLink();
    // under a hub the row has a note in place of the link (no link, no token in the page),
    // and why it cannot be served here; a served one gets its link back (see _fill)
    const note = el('div', { class: 'jp-TunnelPanel-hubNote', 'data-testid': 'jt-hub-note' });
    note.hidden = true;
    const why = el('div', { class: 'jp-TunnelPanel-serveWhy', 'data-testid': 'jt-serve-why' });
    why.hidden = true;
    const kernels = new KernelsSection(this);
    this._kernelSections.set(name, kernels);
    row.append(
      top,
      el('div', { class: 'jp-TunnelPanel-hops', 'data-testid': 'jt-hops' }),
      el('div', { class: 'jp-TunnelPanel-progress', 'data-testid': 'jt-progress' }),
      ...(underHub() ? [note, why] : [link]),
      el('div', { class: 'jp-TunnelPanel-meta', 'data-testid': 'jt-meta' }),
      el('div', { class: 'jp-TunnelPanel-error', 'data-testid': 'jt-error', role: 'status' }),
      kernels.node
    );
    return row;
  }

  private _newLink(): HTMLAnchorElement {
    return el('a', {
      class: 'jp-TunnelPanel-open',
      'data-testid': 'jt-link',
      target: '_blank',
      rel: 'noopener noreferrer'
    }, 'Open JupyterLab') as HTMLAnchorElement;
  }

  private _fill(row: HTMLLIElement, t: ITunnel): void {
    const q = (id: string) => row.querySelector(`[data-testid="${id}"]`) as HTMLElement;
    row.dataset.state = t.state;
    const badge = q('jt-state');
    badge.textContent = t.state;
    badge.className = `jp-TunnelPanel-badge jp-mod-${t.state}`;
    const ended = t.state === 'failed' || t.state === 'orphaned';
    const close = q('jt-close') as HTMLButtonElement;
    close.textContent = ended ? 'Dismiss' : 'Close';
    close.title = ended ? 'Remove it from the list' : `Close tunnel ${t.name}`;
    q('jt-hops').textContent = (t.hops || []).join(' → ');
    q('jt-progress').textContent = progress(t);
    this._showQuestion(row, t);
    const live = t.url && ['ready', 'degraded', 'reconnecting'].includes(t.state);
    // a ready tunnel to a Jupyter (not a remote kernel's own tunnel) offers its kernels
    const kernelsLive = t.state === 'ready' && !!t.url && t.jupyter !== false && !t.kernel;
    const hub = underHub();
    const target = linkTarget(t, hub);
    let link = q('jt-link') as HTMLAnchorElement | null;
    const note = q('jt-hub-note') as HTMLElement | null;
    if (hub && note) {
      // a link only while there is one that works from this browser
      if (target && !link) {
        link = this._newLink();
        note.before(link);
      } else if (!target && link) {
        link.remove();
        link = null;
      }
    }
    if (link) {
      link.hidden = !live || !target;
      if (live && target && link.getAttribute('href') !== target) {
        link.setAttribute('href', target);
      }
    }
    if (note) {
      const shown = !!live && !target;
      note.hidden = !shown;
      const text = shown ? hubNote(t, kernelsLive) : '';
      if (note.textContent !== text) {
        note.textContent = text;
      }
      const why = q('jt-serve-why') as HTMLElement | null;
      const because = shown && t.served_why ? `It cannot be opened through this server: ${t.served_why}` : '';
      if (why && why.textContent !== because) {
        why.textContent = because;
      }
      if (why) {
        why.hidden = !because;
      }
    }
    const meta: string[] = [];
    if (live && t.created) {
      meta.push(`up ${duration(Date.now() / 1000 + this._skew - t.created)}`);
    }
    if (live || t.reconnects) {
      const r = t.reconnects ?? 0;
      meta.push(`${r} reconnect${r === 1 ? '' : 's'}`);
    }
    if (t.local_port) {
      meta.push(`port ${t.local_port}`);
    }
    const resume = live ? resumeText(t) : '';
    if (resume) {
      meta.push(resume);
    }
    if (carriesKernel(t)) {
      meta.push(`carries the remote kernel ${kernelLabel(t)}`);
    } else if (t.owner && t.owner !== 'server') {
      meta.push(`opened by ${t.owner} (pid ${t.pid})`);
    }
    q('jt-meta').textContent = meta.join(' · ');
    const error = [t.error?.error, this._closeErrors.get(t.name)].filter(m => m).join(' ');
    const shown = q('jt-error');
    if (shown.textContent !== error) {
      shown.textContent = error; // unchanged text is not rewritten: no repeated announcements
    }
    this._kernelSections.get(t.name)?.update(t.hops || [], kernelsLive, this._kernelspecs);
  }

  /**
   * The question the tunnel's login asks, with a field for the answer. The same question
   * (same prompt id) keeps its form, so a poll does not wipe what is being typed; a new
   * one gets a fresh, empty form; none removes it.
   */
  private _showQuestion(row: HTMLLIElement, t: ITunnel): void {
    const shown = row.querySelector('[data-testid="jt-question"]') as HTMLFormElement | null;
    const prompt = t.prompt ?? null;
    row.classList.toggle('jp-mod-asking', prompt !== null);
    if (shown && prompt && shown.dataset.promptId === prompt.id) {
      return;
    }
    const hadFocus = !!shown && shown.contains(document.activeElement);
    shown?.remove();
    if (!prompt) {
      return;
    }
    const form = this._questionForm(t, prompt);
    row.insertBefore(form, row.querySelector('[data-testid="jt-link"]'));
    // the cursor goes to the answer field, unless it is elsewhere in the page or in a field
    const active = document.activeElement;
    const idle =
      !active ||
      active === document.body ||
      (this.node.contains(active) && !['INPUT', 'TEXTAREA', 'SELECT'].includes(active.tagName));
    const input = form.querySelector('input');
    if (input && this.isVisible && (hadFocus || idle)) {
      input.focus();
    }
  }

  /**
   * The form of one question: who asks, the server's words (as text), the answer field.
   * A tunnel of another process (a --detach open) is answered through the server too; one
   * that asks on its terminal gets a 409 whose message says so.
   */
  private _questionForm(t: ITunnel, prompt: IPrompt): HTMLFormElement {
    const form = el('form', {
      class: 'jp-TunnelPanel-question',
      'data-testid': 'jt-question',
      'aria-label': `Login question of ${prompt.label || prompt.hop}`
    });
    form.dataset.promptId = prompt.id;
    const who = el('div', { class: 'jp-TunnelPanel-questionWho' });
    // textContent only: the label and the text come from ssh config and a remote server
    who.append(
      el(
        'span',
        { class: 'jp-TunnelPanel-questionHop', 'data-testid': 'jt-question-hop' },
        prompt.label || prompt.hop
      ),
      document.createTextNode(' asks:')
    );
    form.append(who);
    if (prompt.instructions && prompt.instructions.trim()) {
      form.append(
        el(
          'div',
          {
            class: 'jp-TunnelPanel-questionInstructions',
            'data-testid': 'jt-question-instructions'
          },
          prompt.instructions
        )
      );
    }
    const inputId = `jt-answer-${++questionCounter}`;
    form.append(
      el(
        'label',
        { class: 'jp-TunnelPanel-questionText', 'data-testid': 'jt-question-text', for: inputId },
        prompt.text
      )
    );
    const input = el('input', {
      id: inputId,
      class: 'jp-mod-styled jp-TunnelPanel-answer',
      'data-testid': 'jt-answer',
      type: prompt.echo ? 'text' : 'password',
      autocomplete: 'off',
      autocapitalize: 'off',
      spellcheck: 'false',
      'aria-label': `Answer to ${prompt.label || prompt.hop}: ${prompt.text.trim()}`
    });
    const button = el(
      'button',
      {
        type: 'submit',
        class: 'jp-mod-styled jp-mod-accept jp-TunnelPanel-answerButton',
        'data-testid': 'jt-answer-submit'
      },
      'Answer'
    );
    const line = el('div', { class: 'jp-TunnelPanel-answerLine' });
    line.append(input, button);
    const error = el('div', {
      class: 'jp-TunnelPanel-error',
      'data-testid': 'jt-answer-error',
      role: 'alert'
    });
    form.append(line, error);
    form.addEventListener('submit', event => {
      event.preventDefault(); // Enter in the field submits too
      void this._sendAnswer(t.name, prompt.id, input, button, error);
    });
    return form;
  }

  /**
   * Send what the field holds as the answer. The field is disabled while the request runs
   * and emptied after it: the answer stays in the page no longer than the request.
   */
  private async _sendAnswer(
    name: string,
    id: string,
    input: HTMLInputElement,
    button: HTMLButtonElement,
    error: HTMLElement
  ): Promise<void> {
    if (input.disabled) {
      return; // being sent, or sent
    }
    if (input.value === '') {
      // a refused answer fails the login (servers count tries): no empty one by accident
      error.textContent = 'Type the answer first.';
      input.focus();
      return;
    }
    error.textContent = '';
    input.disabled = true;
    button.disabled = true;
    button.textContent = 'Sending…';
    let sent = false;
    try {
      await answerPrompt(name, id, input.value);
      sent = true;
    } catch (e) {
      error.textContent = `Not answered: ${(e as Error).message}`;
    } finally {
      input.value = '';
      if (sent) {
        // this question is answered; the form stays until the next poll replaces it
        button.textContent = 'Sent';
      } else {
        input.disabled = false;
        button.disabled = false;
        button.textContent = 'Answer';
        if (input.isConnected) {
          input.focus();
        }
      }
    }
    void this.refresh();
  }

  private _sent = 0;
  private _shown = 0;
  private _tunnels: ITunnel[] = [];
  private _rows = new Map<string, HTMLLIElement>();
  private _closeErrors = new Map<string, string>();
  private _kernelSections = new Map<string, KernelsSection>();
  private _kernelspecs: IKernelSpec[] = [];
  private _kernelspecManager: KernelSpec.IManager | null;
  private _kernelsSent = 0;
  private _kernelsShown = 0;
  private _readyTargets = '';
  private _timer = 0;
  private _hostsLoaded = false;
  private _skew = 0;
  private _missing: string | null = null;
  private _form!: OpenForm;
  private _list!: HTMLUListElement;
  private _empty!: HTMLParagraphElement;
  private _listError!: HTMLDivElement;
  private _missingNote!: HTMLDivElement;
}
