/**
 * The metadata schema, one migration per entry; `PRAGMA user_version` records
 * how many have run. Append, never edit, once a migration has shipped.
 */
export const migrations: readonly string[] = [
  `
  CREATE TABLE images (
    id TEXT PRIMARY KEY,                 -- config digest
    manifest_digest TEXT NOT NULL,       -- manifest last pulled for it
    manifest_media_type TEXT NOT NULL,
    platform TEXT NOT NULL,              -- os/arch[/variant]
    top_chain_id TEXT,                   -- NULL for an image with no layers
    size INTEGER NOT NULL,               -- compressed bytes of config + layers
    created_at INTEGER NOT NULL,         -- ms since epoch, when first stored
    metadata TEXT                        -- caller's free-form metadata
  ) STRICT;

  CREATE TABLE image_names (
    name TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
  ) STRICT;
  CREATE INDEX image_names_by_image ON image_names(image_id);

  -- Every manifest seen for an image (the same config can come gzip or zstd).
  CREATE TABLE image_manifests (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    manifest_digest TEXT NOT NULL,
    PRIMARY KEY (image_id, manifest_digest)
  ) STRICT;

  CREATE TABLE image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    chain_id TEXT NOT NULL,
    PRIMARY KEY (image_id, position)
  ) STRICT;
  CREATE INDEX image_layers_by_chain ON image_layers(chain_id);

  CREATE TABLE big_data (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (image_id, key)
  ) STRICT;

  CREATE TABLE layers (
    chain_id TEXT PRIMARY KEY,
    parent_chain_id TEXT,
    diff_id TEXT NOT NULL,
    diff_id_verified INTEGER NOT NULL DEFAULT 0,
    uncompressed_size INTEGER            -- known once the tar has been read
  ) STRICT;

  -- The compressed blobs known to hold a layer (several encodings may exist).
  CREATE TABLE layer_blobs (
    chain_id TEXT NOT NULL REFERENCES layers(chain_id) ON DELETE CASCADE,
    blob_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT,                    -- JSON, kept for the lazy path (eStargz TOC digest)
    PRIMARY KEY (chain_id, blob_digest)
  ) STRICT;
  CREATE INDEX layer_blobs_by_blob ON layer_blobs(blob_digest);

  CREATE TABLE blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;

  -- Blobs a running process is working with and that GC must not remove
  -- (containerd's leases). A lease whose process is gone is void.
  CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  CREATE TABLE lease_blobs (
    lease_id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    PRIMARY KEY (lease_id, digest)
  ) STRICT;
  `,
  `
  -- Root filesystems made from images. A row exists from the moment creation
  -- starts (state 'creating', with the creator's pid), so a concurrent clean
  -- never removes the layers it is about to use.
  CREATE TABLE rootfs (
    id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    driver TEXT NOT NULL,                -- 'overlay' (later: 'fuse')
    state TEXT NOT NULL,                 -- 'creating' | 'ready'
    pid INTEGER NOT NULL,                -- creator, while state = 'creating'
    mapping TEXT,                        -- JSON IdMapping, NULL for identity
    layer_dirs TEXT NOT NULL,            -- JSON: layer directory names, bottom-up
    mounted INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
  ) STRICT;
  `,
  `
  -- Where the rootfs is mounted when not at rootfs/<id>/merged (a bundle's rootfs/).
  ALTER TABLE rootfs ADD COLUMN mount_point TEXT;
  `,
  `
  -- Verified byte ranges of partially fetched blobs (partial/<alg>/<hex>).
  CREATE TABLE blob_ranges (
    digest TEXT NOT NULL,
    start INTEGER NOT NULL,
    end INTEGER NOT NULL,
    PRIMARY KEY (digest, start)
  ) STRICT;
  `,
  `
  -- Lazy FUSE mounts and the daemons serving them.
  CREATE TABLE mounts (
    mountpoint TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    image_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
  ) STRICT;
  `,
  `
  -- A mount of an image whose layers are all local is kernel overlayfs over
  -- its layer dirs (no daemon: pid 0), which clean must leave alone.
  ALTER TABLE mounts ADD COLUMN driver TEXT NOT NULL DEFAULT 'fuse';
  ALTER TABLE mounts ADD COLUMN layer_dirs TEXT NOT NULL DEFAULT '[]';
  `,
  `
  -- Snapshots of \`lazyroot snapshotter\` (containerd's snapshots service).
  -- An ordinary snapshot is a directory snapshotter/snapshots/<id>/ (fs/, work/);
  -- a remote one (image_id set) is layer \`layer_position\` of a store image,
  -- served lazily by a FUSE mount of that image. The image row stays while a
  -- snapshot names it, so clean never removes what containerd references.
  CREATE TABLE snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,            -- containerd's key (active, view) or name (committed)
    parent TEXT,                         -- key of the committed parent
    kind TEXT NOT NULL,                  -- 'active' | 'view' | 'committed'
    labels TEXT NOT NULL DEFAULT '{}',   -- JSON
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    image_id TEXT,
    layer_position INTEGER,
    ref TEXT                             -- the reference the remote image is fetched by
  ) STRICT;
  CREATE INDEX snapshots_by_parent ON snapshots(parent);
  `,
];
