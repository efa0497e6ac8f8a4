// Package safeio is how qatc touches the file system when a careless or
// hostile input must not cost the user data, memory or time:
//
//   - reading: OpenRegular refuses anything but a regular file without
//     blocking (a FIFO named as a model or data file cannot hang a
//     command), Map reads a file through a read-only mapping so that a
//     huge or sparse file costs only the pages a parser touches, and
//     Holes measures the never-written ranges of a sparse file;
//   - text: ReadLines decodes a text file as UTF-8 line by line, strips a
//     byte-order mark and names the file and line of invalid bytes or NUL;
//   - writing: a Batch writes files under recognisable temporary names and
//     renames them into place together under a lock on the directory, so
//     that a model and its data file appear as one; temporaries are
//     removed on every exit path, SIGINT and SIGTERM included, and those a
//     SIGKILL left behind are removed by the next write into the directory;
//   - before any work: Check validates every output path of a command
//     against its inputs by file identity (device and inode), so that no
//     path spelling, symbolic link or shared data file lets an output
//     replace an input.
package safeio
