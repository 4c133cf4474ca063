import { LazyrootError, withContext } from '../errors.js';
import { maxId, parseGroup, parsePasswd, parseId, type GroupEntry, type PasswdEntry } from './passwd.js';
import { readRootfsFile } from './rootfs-file.js';

/** Who the container's process runs as. */
export interface ContainerUser {
  uid: number;
  gid: number;
  /** Supplementary groups: the groups of /etc/group that list the user by name. */
  additionalGids: number[];
  /** Home directory from the user's /etc/passwd entry, when it has one. */
  home?: string;
}

/** One side of `user:group`: a number or a name. */
type IdOrName = { id: number } | { name: string };

/**
 * Resolves the image config's `User` (OCI image spec: `user`, `uid`,
 * `user:group`, `uid:gid`, `uid:group`, `user:gid`; empty means root) against
 * the rootfs's own /etc/passwd and /etc/group, never the host's. As with runc
 * and containerd: a numeric uid needs no passwd entry (its gid is then 0); a
 * name that is not in the files is an error.
 */
export async function resolveUser(
  userSpec: string | undefined,
  rootfsDir: string,
  context: { image?: string } = {},
): Promise<ContainerUser> {
  const where = context.image ? `image ${context.image}` : `rootfs ${rootfsDir}`;
  const spec = userSpec ?? '';
  const { user, group } = parseUserSpec(spec, where);

  // Both files are read whole up front, at once: they are small, most forms need both, and on a
  // lazy rootfs each read may wait for the network.
  const [users, groups] = await Promise.all([
    readUserFile(rootfsDir, '/etc/passwd', where).then((t) => (t === undefined ? undefined : parsePasswd(t))),
    readUserFile(rootfsDir, '/etc/group', where).then((t) => (t === undefined ? undefined : parseGroup(t))),
  ]);

  let entry: PasswdEntry | undefined;
  let uid: number;
  if ('name' in user) {
    entry = users?.find((u) => u.name === user.name);
    if (!entry) {
      const why = users === undefined ? 'the rootfs has no /etc/passwd' : 'not in the rootfs\'s /etc/passwd';
      throw new LazyrootError('NOT_FOUND', `${where}: User "${spec}": user "${user.name}" not found: ${why}`);
    }
    uid = entry.uid;
  } else {
    uid = user.id;
    entry = users?.find((u) => u.uid === uid);
  }

  let gid: number;
  if (group === undefined) {
    // An empty User means root:root, whatever passwd says root's group is.
    gid = spec === '' ? 0 : (entry?.gid ?? 0);
  } else if ('id' in group) {
    gid = group.id;
  } else {
    const found = groups?.find((g) => g.name === group.name);
    if (!found) {
      const why = groups === undefined ? 'the rootfs has no /etc/group' : 'not in the rootfs\'s /etc/group';
      throw new LazyrootError('NOT_FOUND', `${where}: User "${spec}": group "${group.name}" not found: ${why}`);
    }
    gid = found.gid;
  }

  const additionalGids = entry ? supplementaryGids(entry.name, gid, groups ?? []) : [];
  return { uid, gid, additionalGids, ...(entry?.home ? { home: entry.home } : {}) };
}

function parseUserSpec(spec: string, where: string): { user: IdOrName; group: IdOrName | undefined } {
  if (spec === '') return { user: { id: 0 }, group: undefined };
  const parts = spec.split(':');
  if (parts.length > 2 || parts[0] === '') {
    throw new LazyrootError('INVALID_DATA', `${where}: invalid User "${spec}" (want user, uid, user:group or uid:gid)`);
  }
  const side = (text: string, kind: 'uid' | 'gid'): IdOrName => {
    if (/^-?\d+$/.test(text)) {
      const id = parseId(text);
      if (id === undefined) throw new LazyrootError('INVALID_DATA', `${where}: invalid User "${spec}": ${kind} out of range 0..${maxId}`);
      return { id };
    }
    return { name: text };
  };
  const user = side(parts[0]!, 'uid');
  // `user:` is read as `user`, taking the group from passwd.
  const group = parts[1] === undefined || parts[1] === '' ? undefined : side(parts[1], 'gid');
  return { user, group };
}

/** Groups listing the user by name, in file order, without the primary group or repeats. */
function supplementaryGids(username: string, primaryGid: number, groups: GroupEntry[]): number[] {
  const gids = new Set<number>();
  for (const g of groups) if (g.gid !== primaryGid && g.members.includes(username)) gids.add(g.gid);
  return [...gids];
}

async function readUserFile(rootfsDir: string, path: string, where: string): Promise<string | undefined> {
  try {
    return (await readRootfsFile(rootfsDir, path))?.toString('utf8');
  } catch (err) {
    if (err instanceof LazyrootError) throw err.withContext(where);
    throw withContext(err, `${where}: reading ${path} of the rootfs`);
  }
}
