package org.trustedml.fs;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.net.URI;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * The {@code tml} scheme: trusted-ml encrypted files seen as their plaintext, so Spark's own
 * file sources (CSV, JSON, text, Parquet) read and write them natively.
 *
 * <p>{@code tml:///abs/path} is the raw local file {@code /abs/path}; {@code tml://AUTH/path}
 * is {@code <trustedml.fs.underlying>://AUTH/path}. Physical files carry the {@code .tml}
 * suffix and are shown without it, with their plaintext length; directories keep their names.
 * Data keys come from {@link TmlKeys}, never from the Configuration.
 */
public class TmlFileSystem extends FileSystem {
  /** Configuration key of the key id new files are written under. */
  public static final String KEY_ID = "trustedml.fs.keyId";
  /** Configuration key of new files' log2 chunk size (12..24, default 20). */
  public static final String LOG2_CHUNK = "trustedml.fs.log2ChunkSize";
  /** Configuration key of the scheme behind {@code tml://AUTH/...} (default file). */
  public static final String UNDERLYING = "trustedml.fs.underlying";

  private static final SecureRandom RANDOM = new SecureRandom();
  private static final FsPermission OWNER_ONLY = new FsPermission((short) 0600);

  private URI uri;
  private FileSystem under;
  private Path workingDir;

  public TmlFileSystem() {}

  @Override
  public String getScheme() {
    return "tml";
  }

  @Override
  public void initialize(URI name, Configuration conf) throws IOException {
    super.initialize(name, conf);
    setConf(conf);
    TmlChunkCipher.warmUp();
    String authority = name.getAuthority();
    if (authority == null || authority.isEmpty()) {
      uri = URI.create("tml:///");
      // The raw local FS: no .crc side files beside the encrypted ones.
      RawLocalFileSystem local = new RawLocalFileSystem();
      local.initialize(URI.create("file:///"), conf);
      under = local;
    } else {
      uri = URI.create("tml://" + authority + "/");
      String scheme = conf.get(UNDERLYING, "file");
      // Hadoop's shared instance: this one is made per read (no cache), that one is not.
      under = FileSystem.get(URI.create(scheme + "://" + authority + "/"), conf);
    }
    workingDir = logical(under.getWorkingDirectory());
  }

  @Override
  public URI getUri() {
    return uri;
  }

  @Override
  public void close() throws IOException {
    try {
      if (under instanceof RawLocalFileSystem) {
        under.close(); // ours alone; a shared instance stays open for its other users
      }
    } finally {
      super.close();
    }
  }

  // --- names -------------------------------------------------------------------------------

  private Path qualify(Path path) {
    return makeQualified(path.isAbsolute() ? path : new Path(workingDir, path));
  }

  /** The underlying path of the same name (no suffix added). */
  private Path physical(Path path) {
    URI u = qualify(path).toUri();
    return new Path(under.getUri().getScheme(), under.getUri().getAuthority(), u.getPath());
  }

  private Path logical(Path phys) {
    return new Path(uri.getScheme(), uri.getAuthority(), phys.toUri().getPath());
  }

  private static boolean encrypted(Path phys) {
    return phys.getName().endsWith(TmlFormat.SUFFIX);
  }

  private static Path withSuffix(Path phys) {
    return phys.suffix(TmlFormat.SUFFIX);
  }

  private static String stripped(String name) {
    return name.endsWith(TmlFormat.SUFFIX)
        ? name.substring(0, name.length() - TmlFormat.SUFFIX.length())
        : name;
  }

  /** How messages name a file: its path without a scheme, like the Python side. */
  static String display(Path phys) {
    return phys.toUri().getPath();
  }

  /** The existing underlying status for {@code path}: {@code p.tml} or {@code p}; or null. */
  private FileStatus resolve(Path path) throws IOException {
    Path phys = physical(path);
    if (encrypted(phys)) {
      FileStatus direct = statusOrNull(phys);
      if (direct != null && direct.isFile()) {
        return direct;
      }
    }
    FileStatus suffixed = statusOrNull(withSuffix(phys));
    if (suffixed != null && suffixed.isFile()) {
      return suffixed;
    }
    return statusOrNull(phys);
  }

  private FileStatus statusOrNull(Path phys) throws IOException {
    try {
      return under.getFileStatus(phys);
    } catch (FileNotFoundException e) {
      return null;
    }
  }

  private FileStatus existing(Path path) throws IOException {
    FileStatus found = resolve(path);
    if (found == null) {
      throw new FileNotFoundException("File " + path + " does not exist");
    }
    return found;
  }

  /** The logical status of an underlying one: name without .tml, plaintext length. */
  private FileStatus toLogical(FileStatus st) throws IOException {
    Path phys = st.getPath();
    long length = st.getLen();
    Path shown = logical(phys);
    if (st.isFile() && encrypted(phys)) {
      shown = new Path(shown.getParent(), stripped(phys.getName()));
      length = plaintextLength(phys, st.getLen());
    }
    return new FileStatus(
        length,
        st.isDirectory(),
        st.getReplication(),
        st.getBlockSize(),
        st.getModificationTime(),
        st.getAccessTime(),
        st.getPermission(),
        st.getOwner(),
        st.getGroup(),
        shown);
  }

  private long plaintextLength(Path phys, long rawLength) throws IOException {
    try (FSDataInputStream in = under.open(phys)) {
      TmlFormat.Header header = readHeader(in, rawLength, display(phys));
      return TmlFormat.layout(header, rawLength, display(phys)).plaintextSize();
    } catch (TmlIntegrityException e) {
      // Listed with its raw length: opening it fails with this same message, in the task.
      return rawLength;
    }
  }

  private static TmlFormat.Header readHeader(FSDataInputStream in, long rawLength, String name)
      throws IOException {
    byte[] head = new byte[(int) Math.min(rawLength, TmlFormat.MAX_HEADER_SIZE)];
    in.readFully(0, head, 0, head.length);
    return TmlFormat.parse(head, head.length, name);
  }

  // --- reading -----------------------------------------------------------------------------

  @Override
  public FileStatus getFileStatus(Path path) throws IOException {
    return asAsked(toLogical(existing(path)), path);
  }

  /**
   * A file asked for by its {@code .tml} name keeps that name: Spark's file index drops a file
   * root listed under another name, so {@code tml:///d/x.csv.tml} would read as empty.
   */
  private FileStatus asAsked(FileStatus logical, Path path) {
    if (logical.isFile()) {
      logical.setPath(qualify(path));
    }
    return logical;
  }

  @Override
  public FileStatus[] listStatus(Path path) throws IOException {
    FileStatus found = existing(path);
    if (!found.isDirectory()) {
      return new FileStatus[] {asAsked(toLogical(found), path)};
    }
    FileStatus[] children = under.listStatus(found.getPath());
    List<FileStatus> out = new ArrayList<>(children.length);
    for (FileStatus child : children) {
      out.add(toLogical(child));
    }
    return out.toArray(new FileStatus[0]);
  }

  @Override
  public FSDataInputStream open(Path path, int bufferSize) throws IOException {
    FileStatus found = existing(path);
    if (found.isDirectory()) {
      throw new FileNotFoundException(path + " is a directory");
    }
    Path phys = found.getPath();
    String name = display(phys);
    FSDataInputStream raw = under.open(phys, bufferSize);
    try {
      long rawLength = found.getLen();
      TmlFormat.Header header = readHeader(raw, rawLength, name);
      TmlFormat.Layout layout = TmlFormat.layout(header, rawLength, name);
      TmlInputStream plain =
          new TmlInputStream(
              raw, name, header, layout,
              TmlKeys.unwrap(getConf(), name, header.keyId, header.wrapped));
      return new FSDataInputStream(plain);
    } catch (IOException | RuntimeException e) {
      raw.close();
      throw e;
    }
  }

  // --- writing -----------------------------------------------------------------------------

  @Override
  public FSDataOutputStream create(
      Path path,
      FsPermission permission,
      boolean overwrite,
      int bufferSize,
      short replication,
      long blockSize,
      Progressable progress)
      throws IOException {
    Path phys = physical(path);
    Path target = encrypted(phys) ? phys : withSuffix(phys);
    String name = display(target);
    FileStatus there = statusOrNull(target);
    if (there != null && (there.isDirectory() || !overwrite)) {
      throw new FileAlreadyExistsException(name + " already exists");
    }
    String keyId = getConf().get(KEY_ID);
    if (keyId == null || keyId.isEmpty()) {
      throw new IOException(name + ": writing needs a key id (option " + KEY_ID + ")");
    }
    int log2 = getConf().getInt(LOG2_CHUNK, TmlFormat.DEFAULT_LOG2_CHUNK);
    if (log2 < TmlFormat.MIN_LOG2_CHUNK || log2 > TmlFormat.MAX_LOG2_CHUNK) {
      throw new IOException(
          name + ": " + LOG2_CHUNK + " must be in " + TmlFormat.MIN_LOG2_CHUNK + ".."
              + TmlFormat.MAX_LOG2_CHUNK + ", got " + log2);
    }
    TmlKeys.Generated key = TmlKeys.generate(getConf(), name, keyId);
    byte[] fileId = new byte[TmlFormat.FILE_ID_SIZE];
    RANDOM.nextBytes(fileId);
    TmlFormat.Header header = TmlFormat.build(keyId, key.wrapped, log2, fileId);
    FSDataOutputStream raw =
        under.create(target, OWNER_ONLY, overwrite, bufferSize, replication, blockSize, progress);
    try {
      return new FSDataOutputStream(new TmlOutputStream(raw, name, header, key.key), statistics);
    } catch (IOException | RuntimeException e) {
      raw.close();
      throw e;
    }
  }

  @Override
  public FSDataOutputStream append(Path path, int bufferSize, Progressable progress)
      throws IOException {
    throw new IOException(
        path + ": appending to a trusted-ml file is not supported (its last chunk is sealed)");
  }

  @Override
  public boolean rename(Path src, Path dst) throws IOException {
    FileStatus from = resolve(src);
    if (from == null) {
      return false;
    }
    Path target = physical(dst);
    FileStatus into = statusOrNull(target);
    if (into != null && into.isDirectory()) {
      // Moved into an existing directory: it keeps its physical name.
      target = new Path(target, from.getPath().getName());
    } else if (from.isFile() && encrypted(from.getPath()) && !encrypted(target)) {
      target = withSuffix(target);
    }
    if (statusOrNull(target) != null) {
      return false;
    }
    return under.rename(from.getPath(), target);
  }

  @Override
  public boolean delete(Path path, boolean recursive) throws IOException {
    FileStatus found = resolve(path);
    return found != null && under.delete(found.getPath(), recursive);
  }

  @Override
  public boolean mkdirs(Path path, FsPermission permission) throws IOException {
    return under.mkdirs(physical(path), permission);
  }

  @Override
  public void setWorkingDirectory(Path dir) {
    workingDir = qualify(dir);
  }

  @Override
  public Path getWorkingDirectory() {
    return workingDir;
  }

  @Override
  public void setPermission(Path path, FsPermission permission) throws IOException {
    FileStatus found = existing(path);
    under.setPermission(found.getPath(), permission);
  }

  @Override
  public void setTimes(Path path, long mtime, long atime) throws IOException {
    under.setTimes(existing(path).getPath(), mtime, atime);
  }
}
