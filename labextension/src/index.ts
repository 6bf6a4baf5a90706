/**
 * jupyter-tunnel: a "Tunnels" side panel and palette commands for JupyterLab 4.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Dialog, ICommandPalette, Notification, showDialog } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import { listTunnels } from './api';
import { carriesKernel, TunnelPanel } from './panel';

/** Two hosts joined by a tube: the panel's icon (coloured like JupyterLab's own icons). */
const tunnelSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <rect x="1" y="6" width="6" height="12" rx="1.5"/>
    <rect x="17" y="6" width="6" height="12" rx="1.5"/>
    <path d="M7 10h10v1.6H7zM7 12.4h10V14H7z"/>
  </g>
</svg>`;

export const tunnelIcon = new LabIcon({ name: 'jupyter-tunnel:tunnel', svgstr: tunnelSvg });

namespace CommandIDs {
  export const open = 'jupyter-tunnel:open';
  export const closeAll = 'jupyter-tunnel:close-all';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-tunnel:plugin',
  description: 'A side panel to open, watch and close SSH tunnels to remote JupyterLabs.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null
  ) => {
    const panel = new TunnelPanel({ kernelspecs: app.serviceManager.kernelspecs });
    panel.title.icon = tunnelIcon;
    app.shell.add(panel, 'left', { rank: 850 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Open tunnel…',
      caption: 'Open an SSH tunnel to a remote JupyterLab',
      icon: tunnelIcon,
      execute: () => {
        app.shell.activateById(panel.id);
        panel.focusTarget();
      }
    });

    app.commands.addCommand(CommandIDs.closeAll, {
      label: 'Close all tunnels',
      caption: 'Close every SSH tunnel listed in the Tunnels panel',
      execute: async () => {
        let tunnels;
        try {
          tunnels = (await listTunnels()).data;
        } catch (e) {
          Notification.error(`Cannot list the tunnels: ${(e as Error).message}`, {
            autoClose: false
          });
          return;
        }
        // a remote kernel's own tunnel closes when its kernel is shut down
        const kept = tunnels.filter(carriesKernel);
        tunnels = tunnels.filter(t => !carriesKernel(t));
        const keptNote = kept.length
          ? ` ${kept.length} tunnel${kept.length === 1 ? '' : 's'} of running remote kernels ` +
            'stay: shut those kernels down to close them.'
          : '';
        if (tunnels.length === 0) {
          Notification.info(`There are no tunnels to close.${keptNote}`, { autoClose: 3000 });
          return;
        }
        const names = tunnels.map(t => t.name).join(', ');
        const answer = await showDialog({
          title: 'Close all tunnels?',
          body: `This closes ${tunnels.length} tunnel${tunnels.length === 1 ? '' : 's'}: ${names}.${keptNote}`,
          buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Close all' })]
        });
        if (!answer.button.accept) {
          return;
        }
        const results = await Promise.allSettled(tunnels.map(t => panel.closeTunnel(t.name)));
        const failed = results
          .map((r, i) =>
            r.status === 'rejected' ? `${tunnels[i].name}: ${(r.reason as Error).message}` : ''
          )
          .filter(m => m);
        if (failed.length) {
          Notification.error(`Some tunnels could not be closed. ${failed.join('; ')}`);
        } else {
          Notification.success('All tunnels closed.', { autoClose: 3000 });
        }
      }
    });

    if (palette) {
      const category = 'Tunnels';
      palette.addItem({ command: CommandIDs.open, category });
      palette.addItem({ command: CommandIDs.closeAll, category });
    }
  }
};

export default plugin;
