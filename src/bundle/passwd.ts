/**
 * Parsers for the image's /etc/passwd and /etc/group (the formats of
 * passwd(5) and group(5)). The files come from an untrusted image, so a line
 * that does not parse is skipped: a garbled uid must never read as 0.
 */

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

/** The largest id runc accepts (it keeps ids in an int32). */
export const maxId = 2 ** 31 - 1;

/** A decimal id in [0, maxId], or undefined. */
export function parseId(text: string): number | undefined {
  if (!/^\d+$/.test(text)) return undefined;
  const id = Number(text);
  return id <= maxId ? id : undefined;
}

function fieldsOf(text: string): string[][] {
  return text
    .split('\n')
    .map((line) => line.trim())
    // '+'/'-' lines are NIS compat entries, meaningless inside a container.
    .filter((line) => line !== '' && !line.startsWith('#') && !line.startsWith('+') && !line.startsWith('-'))
    .map((line) => line.split(':'));
}

/** name:password:uid:gid:gecos:home:shell */
export function parsePasswd(text: string): PasswdEntry[] {
  const entries: PasswdEntry[] = [];
  for (const [name, , uidText, gidText, , home] of fieldsOf(text)) {
    const uid = parseId(uidText ?? '');
    const gid = parseId(gidText ?? '');
    if (!name || uid === undefined || gid === undefined) continue;
    entries.push({ name, uid, gid, home: home ?? '' });
  }
  return entries;
}

/** name:password:gid:member,member */
export function parseGroup(text: string): GroupEntry[] {
  const entries: GroupEntry[] = [];
  for (const [name, , gidText, memberText] of fieldsOf(text)) {
    const gid = parseId(gidText ?? '');
    if (!name || gid === undefined) continue;
    const members = (memberText ?? '')
      .split(',')
      .map((m) => m.trim())
      .filter((m) => m !== '');
    entries.push({ name, gid, members });
  }
  return entries;
}
