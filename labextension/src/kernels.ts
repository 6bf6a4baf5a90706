/**
 * A ready tunnel's remote kernels: "Use beast's kernels here" installs a kernelspec here for
 * each kernel of the tunnel's target (through the server, which logs in to the hosts), and
 * each installed one of that target is listed with a Remove.
 *
 * Every text comes from the server or the ssh config: set as textContent only.
 */
import { IKernelSpec, installKernels, removeKernel } from './api';
import { el } from './dom';

/** What a section needs from the panel. */
export interface IKernelsHost {
  /**
   * Kernelspecs changed on the server: reload JupyterLab's (the launcher and the kernel
   * picker show them at once) and the panel's list of ours.
   */
  specsChanged(): Promise<void>;
}

/** The kernelspecs of ``target`` among those installed (host names compare as ssh does). */
export function specsOf(target: string, specs: IKernelSpec[]): IKernelSpec[] {
  const host = target.toLowerCase();
  return specs.filter(s => (s.target || '').toLowerCase() === host);
}

/** The remote kernels part of one tunnel's row. */
export class KernelsSection {
  readonly node: HTMLDivElement;

  constructor(private readonly _host: IKernelsHost) {
    this.node = el('div', { class: 'jp-TunnelPanel-kernels', 'data-testid': 'jt-kernels' });
    this._use = el('button', {
      type: 'button',
      class: 'jp-mod-styled jp-TunnelPanel-useKernels',
      'data-testid': 'jt-use-kernels'
    });
    this._use.addEventListener('click', () => void this.install());
    this._status = el('div', {
      class: 'jp-TunnelPanel-kernelsStatus',
      'data-testid': 'jt-kernels-status',
      role: 'status'
    });
    this._list = el('ul', {
      class: 'jp-TunnelPanel-kernelList',
      'data-testid': 'jt-kernelspecs',
      'aria-label': 'Remote kernels installed here'
    });
    this._error = el('div', {
      class: 'jp-TunnelPanel-error',
      'data-testid': 'jt-kernels-error',
      role: 'alert'
    });
    this.node.append(this._use, this._status, this._list, this._error);
    this.node.hidden = true;
  }

  /**
   * Show the section for a tunnel whose hops are ``hops`` (first jump host first, the
   * target last), ``live`` when its Jupyter is reachable; ``specs``: ours, all targets.
   */
  update(hops: string[], live: boolean, specs: IKernelSpec[]): void {
    const target = hops[hops.length - 1] ?? '';
    this._target = target;
    this._via = hops.slice(0, -1);
    // kept while a request runs: a poll during an outage must not hide its outcome
    this.node.hidden = !target || !(live || this._busy);
    const label = `Use ${target}'s kernels here`;
    if (this._use.textContent !== label) {
      this._use.textContent = label;
      this._use.title =
        `Add ${target}'s kernels to the launcher and the kernel picker: the notebook ` +
        `stays here, its code runs on ${target}`;
    }
    this._use.disabled = this._busy;
    this._showSpecs(specsOf(target, specs));
  }

  /** Install the target's kernels here (all of them), then reload the kernelspecs. */
  async install(): Promise<void> {
    if (this._busy || !this._target) {
      return;
    }
    const target = this._target;
    this._busy = true;
    this._use.disabled = true;
    this._error.textContent = '';
    this._status.textContent = `Installing ${target}'s kernels…`;
    try {
      const done = await installKernels({ target, via: this._via });
      await this._host.specsChanged();
      this._status.textContent = done.length
        ? `Installed ${done.map(k => k.display_name).join(', ')}: in the launcher and ` +
          'the kernel picker.'
        : `${target} offers no kernels.`;
    } catch (e) {
      this._status.textContent = '';
      this._error.textContent = `Cannot use ${target}'s kernels: ${(e as Error).message}`;
    } finally {
      this._busy = false;
      this._use.disabled = false;
    }
  }

  /** Remove one of the kernelspecs shown, then reload the kernelspecs. */
  async remove(spec: IKernelSpec, button: HTMLButtonElement): Promise<void> {
    button.disabled = true;
    this._error.textContent = '';
    try {
      await removeKernel(spec.name);
      this._status.textContent = `Removed ${spec.display_name}.`;
    } catch (e) {
      this._error.textContent = `Cannot remove ${spec.display_name}: ${(e as Error).message}`;
      button.disabled = false;
    }
    // reloaded either way: a 404 says it is gone already
    await this._host.specsChanged();
  }

  /** The list of the target's kernelspecs; rebuilt only when it changed (keeps focus). */
  private _showSpecs(specs: IKernelSpec[]): void {
    const key = JSON.stringify(specs.map(s => [s.name, s.display_name]));
    if (key === this._shownKey) {
      return;
    }
    this._shownKey = key;
    const items = specs.map(spec => {
      const item = el('li', {
        class: 'jp-TunnelPanel-kernelSpec',
        'data-testid': 'jt-kernelspec'
      });
      item.dataset.name = spec.name;
      const remove = el(
        'button',
        {
          type: 'button',
          class: 'jp-TunnelPanel-link jp-TunnelPanel-kernelRemove',
          'data-testid': 'jt-kernel-remove',
          'aria-label': `Remove ${spec.display_name}`,
          title: `Remove the kernelspec ${spec.name} (a running kernel keeps running)`
        },
        'Remove'
      );
      remove.addEventListener('click', () => void this.remove(spec, remove));
      item.append(
        el('span', { class: 'jp-TunnelPanel-kernelName', 'data-testid': 'jt-kernel-name' },
          spec.display_name),
        remove
      );
      return item;
    });
    this._list.replaceChildren(...items);
    this._list.hidden = items.length === 0;
  }

  private _target = '';
  private _via: string[] = [];
  private _busy = false;
  private _shownKey = '';
  private _use: HTMLButtonElement;
  private _status: HTMLDivElement;
  private _list: HTMLUListElement;
  private _error: HTMLDivElement;
}
