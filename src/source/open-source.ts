import type { ImageReference } from '../reference/reference.js';
import { DockerArchiveSource } from './docker-archive-source.js';
import type { ImageSource } from './image-source.js';
import { openOciArchiveSource } from './oci-archive-source.js';
import { openOciLayoutSource } from './oci-layout-source.js';
import type { RegistrySourceOptions } from './registry/registry-source.js';
import { TarballSource } from './tarball-source.js';

export interface SourceOptions {
  /** Scratch space for sources that need it (a compressed archive is decompressed here). */
  tmpDir: string;
  /** Options for the registry source (auth, TLS, retries). */
  registry?: RegistrySourceOptions;
}

/** The ImageSource for a reference, by its transport. */
export async function openSource(ref: ImageReference, options: SourceOptions): Promise<ImageSource> {
  switch (ref.transport) {
    case 'docker': {
      // Loaded on demand: undici is the largest module, and local sources never need it.
      const { RegistrySource } = await import('./registry/registry-source.js');
      return new RegistrySource(ref, options.registry);
    }
    case 'oci':
      return openOciLayoutSource(ref);
    case 'oci-archive':
      return openOciArchiveSource(ref, { tmpDir: options.tmpDir });
    case 'docker-archive':
      return DockerArchiveSource.open(ref, { tmpDir: options.tmpDir });
    case 'tarball':
      return new TarballSource(ref);
  }
}
