import type { ImageReference } from '../reference/reference.js';
import type { ImageSource } from './image-source.js';
import type { RegistrySourceOptions } from './registry/registry-source.js';

export interface SourceOptions {
  /** Scratch space for sources that need it (a compressed archive is decompressed here). */
  tmpDir: string;
  /** Options for the registry source (auth, TLS, retries). */
  registry?: RegistrySourceOptions;
}

/**
 * The ImageSource for a reference, by its transport. Each kind loads when it
 * is first opened: undici is the largest module and local sources never need
 * it, and a front end that hands the work to a daemon loads none of them.
 */
export async function openSource(ref: ImageReference, options: SourceOptions): Promise<ImageSource> {
  switch (ref.transport) {
    case 'docker': {
      const { RegistrySource } = await import('./registry/registry-source.js');
      return new RegistrySource(ref, options.registry);
    }
    case 'oci':
      return (await import('./oci-layout-source.js')).openOciLayoutSource(ref);
    case 'oci-archive':
      return (await import('./oci-archive-source.js')).openOciArchiveSource(ref, { tmpDir: options.tmpDir });
    case 'docker-archive':
      return (await import('./docker-archive-source.js')).DockerArchiveSource.open(ref, { tmpDir: options.tmpDir });
    case 'tarball':
      return new (await import('./tarball-source.js')).TarballSource(ref);
  }
}
