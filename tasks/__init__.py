"""Build, compress, boot-test, describe and publish Debian cloud images.

The package shows the design:

    model/     what is built: the matrix (releases, vendors, architectures),
               the settings schema, the architecture registry and the fixed
               vocabularies, the records stages hand each other, where each
               cell's files live, the command-line options, one run's plan,
               what a version is
    stages/    how it is built: one module per stage (base, fai, sbom,
               compress, boottest, manifest, provenance, publish) and what
               each needs (qemu, the in-build image checks and facts, the FAI
               config space, the build's identity, the changes between versions,
               the initramfs's members, the cell's slow steps kept for its next build,
               the disk assembled from the tree, what a base's images share,
               the storage's simplestreams catalogue)
    release/   the manual release step: instance test, cloud platforms (one
               module and class each: settings, upload, cleanup; every region,
               deprecation, resumable through its journal), notify;
               the release project's job (GitLab's API, the build's seal);
               doit cleanup
    storage/   transport only: files into a directory, WebDAV or S3, under
               the storage's own lock
    system/    OS plumbing: processes, the build's sandbox and its user namespace,
               binfmt, CPU slots, atomic files, the work directory lock, checksums,
               apt cache, OpenPGP signing, what a build takes of the environment,
               the pinned disk tools, an image's tree read without mounting it,
               the host's apt on a state of its own
    builder/   the builder image: every tool the project runs, made from Debian
               packages into an OCI archive named by its inputs (doit builder)
    registry.py  the stage registry: every stage, once
    graph.py   the stage registry turned into doit tasks
    actions.py the doit action around a stage: a failure in one message
    commands/  the commands run by name beside the stages, one module each
               (compare, changes, verify, cleanup, reproduce, ci, release_ci, builder)
    ci.py      the same registry as a GitLab CI child pipeline, and the
               release project's pipeline
    published.py  published images read as a user would (doit verify, doit changes)
    reproduce.py  doit reproduce: a second build of a cell, compared with the first
    stale.py   what a run would make again, without running it
    summary.py, progress.py, errors.py   what a run shows and reports
    cmdline.py    a doit command line, read as doit reads it
    taskstate.py  doit's state of each task kept beside its targets, and the
               database checked (and made again) before doit opens it

Nothing imports upward: system/ and storage/ know no stage, stages know the
model, graph, commands and ci know everything. The one exception is
named where it is made: the model reads each platform's settings from
release/platforms/, where the platform is declared whole.
"""
