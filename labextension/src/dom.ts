/**
 * Small DOM helpers and the words the panel shows for a tunnel.
 */
import { ITunnel } from './api';

/** An element with attributes and text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    node.setAttribute(key, value);
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/** `1h 02m`, `3m 05s`, `12s`. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  if (h > 0) {
    return `${h}h ${pad(m)}m`;
  }
  if (m > 0) {
    return `${m}m ${pad(s % 60)}s`;
  }
  return `${s % 60}s`;
}

/** `512 B`, `2.1 MB`: as the command line says it. */
export function bytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB'];
  let value = Math.max(0, n);
  let i = 0;
  while (value >= 1000 && i < units.length - 1) {
    value /= 1000;
    i += 1;
  }
  return i === 0 ? `${value} B` : `${value.toFixed(1)} ${units[i]}`;
}

/**
 * What resumable connections hold: "2 connections held, 2.1 MB buffered" while the helper
 * cannot be reached (an outage), else that they resume (as humanize.resume_text says it).
 */
export function resumeText(t: ITunnel): string {
  if (!t.resume) {
    return '';
  }
  const held = t.resume.held || 0;
  if (held && !t.resume.helper_reached) {
    return `${held} connection${held === 1 ? '' : 's'} held, ${bytes(
      t.resume.buffered || 0
    )} buffered`;
  }
  return 'connections resume after an outage';
}

/** What the tunnel is doing now, in words (empty when there is nothing to say). */
export function progress(t: ITunnel): string {
  const hops = t.hops || [];
  switch (t.state) {
    case 'connecting': {
      const i = Math.min(t.hop_index ?? 0, Math.max(hops.length - 1, 0));
      return hops.length
        ? `Connecting to ${hops[i]} (${i + 1}/${hops.length})…`
        : 'Connecting…';
    }
    case 'detecting':
      return `Looking for a running Jupyter on ${t.target}…`;
    case 'reconnecting':
      // while a hop asks, its question is shown below (problem only repeats it)
      return `Reconnecting${t.attempt ? ` (attempt ${t.attempt})` : ''}…${
        t.problem && !t.prompt ? ' ' + t.problem : ''
      }`;
    case 'degraded':
      return t.problem || 'The remote Jupyter does not answer.';
    case 'orphaned':
      return `The process that opened it (pid ${t.pid}) is gone; close it to clean up.`;
    default:
      return '';
  }
}
