/**
 * The form that opens a tunnel: target (with the ssh config's hosts suggested), any
 * number of jump hosts, and options (name, ports, launch).
 */
import { IOpenRequest, openTunnel } from './api';
import { el } from './dom';

let counter = 0;

export class OpenForm {
  /** ``opened`` is called after every attempt, so the list can show the new tunnel. */
  constructor(private readonly _opened: () => void) {
    const hostsId = `jt-hosts-${++counter}`;
    this._hosts = el('datalist', { id: hostsId });
    const form = (this.node = el('form', {
      class: 'jp-TunnelPanel-form',
      'data-testid': 'jt-form'
    }));
    const field = (label: string, input: HTMLElement, extra = '') => {
      const wrap = el('label', { class: `jp-TunnelPanel-field ${extra}` });
      wrap.append(el('span', {}, label), input);
      return wrap;
    };
    const input = (testid: string, attrs: Record<string, string> = {}) =>
      el('input', {
        class: 'jp-mod-styled',
        'data-testid': testid,
        autocomplete: 'off',
        spellcheck: 'false',
        ...attrs
      });

    this._target = input('jt-target', {
      list: hostsId,
      placeholder: 'host running Jupyter, e.g. beast',
      required: ''
    });
    this._viaList = el('div', { class: 'jp-TunnelPanel-viaList', 'data-testid': 'jt-via-list' });
    const addVia = el(
      'button',
      { type: 'button', class: 'jp-TunnelPanel-link', 'data-testid': 'jt-add-via' },
      '+ jump host'
    );
    addVia.addEventListener('click', () => this._addVia(hostsId, true));
    this._addVia(hostsId, false);

    const options = el('details', { class: 'jp-TunnelPanel-options' });
    options.append(el('summary', {}, 'Options'));
    this._name = input('jt-name', { placeholder: 'from the target' });
    this._localPort = input('jt-local-port', { inputmode: 'numeric', placeholder: 'any free' });
    this._remotePort = input('jt-remote-port', {
      inputmode: 'numeric',
      placeholder: 'newest server'
    });
    this._launch = el('input', { type: 'checkbox', 'data-testid': 'jt-launch' });
    const launch = el('label', { class: 'jp-TunnelPanel-check' });
    launch.append(this._launch, el('span', {}, 'Start JupyterLab there'));
    launch.title =
      'Start a JupyterLab on the target for this tunnel (if one started so does not run ' +
      'already): it can then be opened through this Jupyter server, also under JupyterHub';
    options.append(
      field('Name', this._name),
      field('Local port', this._localPort),
      field('Remote port', this._remotePort),
      launch
    );

    this._openButton = el(
      'button',
      { type: 'submit', class: 'jp-mod-styled jp-mod-accept', 'data-testid': 'jt-open' },
      'Open'
    );
    this._formError = el('div', {
      class: 'jp-TunnelPanel-error',
      'data-testid': 'jt-form-error',
      role: 'alert'
    });
    const actions = el('div', { class: 'jp-TunnelPanel-actions' });
    actions.append(this._openButton);
    form.append(
      field('Target', this._target),
      this._viaList,
      addVia,
      options,
      actions,
      this._formError,
      this._hosts
    );
    form.addEventListener('submit', event => {
      event.preventDefault();
      void this._submit();
    });
  }

  /** The form element. */
  node!: HTMLFormElement;

  /** Host names to suggest for the target and the jump hosts. */
  setHosts(hosts: string[]): void {
    this._hosts.replaceChildren(...hosts.map(h => el('option', { value: h })));
  }

  /** Put the cursor in the Target field. */
  focusTarget(): void {
    this._target.focus();
  }

  /** The Target field. */
  get target(): HTMLInputElement {
    return this._target;
  }

  private _addVia(hostsId: string, focus: boolean): void {
    const row = el('div', { class: 'jp-TunnelPanel-viaRow' });
    const input = el('input', {
      class: 'jp-mod-styled',
      'data-testid': 'jt-via',
      list: hostsId,
      placeholder: 'jump host (optional), e.g. unicorn',
      autocomplete: 'off',
      spellcheck: 'false'
    });
    const remove = el(
      'button',
      { type: 'button', class: 'jp-TunnelPanel-link', title: 'Remove this jump host' },
      '×'
    );
    remove.addEventListener('click', () => {
      if (this._viaList.children.length > 1) {
        row.remove();
      } else {
        input.value = '';
      }
    });
    const label = el('label', { class: 'jp-TunnelPanel-field' });
    label.append(el('span', {}, 'via'), input);
    row.append(label, remove);
    this._viaList.append(row);
    if (focus) {
      input.focus();
    }
  }

  private _request(): IOpenRequest {
    const via = Array.from(this._viaList.querySelectorAll('input'))
      .map(i => i.value.trim())
      .filter(v => v);
    const body: IOpenRequest = { target: this._target.value.trim(), via };
    const name = this._name.value.trim();
    if (name) {
      body.name = name;
    }
    for (const [key, node] of [
      ['local_port', this._localPort],
      ['remote_port', this._remotePort]
    ] as const) {
      const value = node.value.trim();
      if (value) {
        // the server checks the range and says what is wrong
        body[key] = /^\d+$/.test(value) ? Number(value) : (value as unknown as number);
      }
    }
    if (this._launch.checked) {
      body.launch = true;
    }
    return body;
  }

  private async _submit(): Promise<void> {
    const body = this._request();
    this._formError.textContent = '';
    if (!body.target) {
      this._formError.textContent = 'Say which host runs Jupyter (Target).';
      this._target.focus();
      return;
    }
    this._openButton.disabled = true;
    this._openButton.textContent = 'Opening…';
    try {
      await openTunnel(body);
      this._name.value = '';
    } catch (error) {
      this._formError.textContent = (error as Error).message;
    } finally {
      this._openButton.disabled = false;
      this._openButton.textContent = 'Open';
      this._opened();
    }
  }

  private _target!: HTMLInputElement;
  private _viaList!: HTMLDivElement;
  private _name!: HTMLInputElement;
  private _localPort!: HTMLInputElement;
  private _remotePort!: HTMLInputElement;
  private _launch!: HTMLInputElement;
  private _openButton!: HTMLButtonElement;
  private _formError!: HTMLDivElement;
  private _hosts: HTMLDataListElement;
}
