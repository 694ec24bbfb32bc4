import Foundation
import MayflyCore
import MayflyGuest
import MayflyTestSupport
import Testing

@testable import MayflyAgent

/// Collects what a JobLog emits.
actor CollectingSink: JobLogSink {
    private(set) var bytes: [UInt8] = []
    func write(_ chunk: [UInt8]) async { bytes += chunk }
    var text: String { String(decoding: bytes, as: UTF8.self) }
}

@Suite("Masking")
struct MaskingTests {
    @Test("a secret split across chunks at every possible point is still masked")
    func splitAnywhere() {
        let secret = "s3cr3t-value-42"
        let text = Array("before \(secret) middle \(secret)\(secret) after".utf8)
        for cut in 0...text.count {
            var masker = SecretMasker(secrets: [secret])
            let output = masker.mask(Array(text[..<cut])) + masker.mask(Array(text[cut...])) + masker.finish()
            #expect(String(decoding: output, as: UTF8.self) == "before [MASKED] middle [MASKED][MASKED] after", "cut at \(cut)")
        }
    }

    @Test("byte-by-byte feeding, overlapping secrets; short values are masked too, empty ones dropped")
    func byteByByte() {
        var masker = SecretMasker(secrets: ["abcdef", "abcdefgh", "xy", " ", ""])
        var output: [UInt8] = []
        for byte in Array("1abcdefgh2abcdef3xy 4".utf8) { output += masker.mask([byte]) }
        output += masker.finish()
        #expect(String(decoding: output, as: UTF8.self) == "1[MASKED]2[MASKED]3[MASKED] 4")
    }

    @Test("token prefixes and sensitive URL parameters are masked, also when split anywhere")
    func prefixesAndParameters() {
        let text = Array(
            "token glpat-AbC123_x.y=z-9 end; url https://h/x?a=1&Private_Token=s3cr3t&b=2 and glrt-Q1 done; rtglpat- ;".utf8)
        let expected =
            "token glpat-[MASKED] end; url https://h/x?a=1&Private_Token=[MASKED]&b=2 and glrt-[MASKED] done; rtglpat- ;"
        for cut in 0...text.count {
            var masker = SecretMasker(secrets: [], tokenPrefixes: SecretMasker.defaultTokenPrefixes, maskURLParameters: true)
            let output = masker.mask(Array(text[..<cut])) + masker.mask(Array(text[cut...])) + masker.finish()
            #expect(String(decoding: output, as: UTF8.self) == expected, "cut at \(cut)")
        }
        var long = SecretMasker(secrets: [], tokenPrefixes: ["glpat-"])
        var output = long.mask(Array("glpat-".utf8) + Array(repeating: UInt8(ascii: "a"), count: 10_000))
        output += long.mask(Array(repeating: UInt8(ascii: "a"), count: 100) + Array(" tail".utf8)) + long.finish()
        #expect(String(decoding: output, as: UTF8.self) == "glpat-[MASKED] tail", "a very long token is dropped whole")
    }

    @Test("the job log masks output and its own lines, and cuts at the limit with a notice")
    func jobLog() async {
        let sink = CollectingSink()
        let log = JobLog(sink: sink, maskedValues: ["hunter2-password"], limit: .kibibytes(1))
        await log.write(Array("pass=hunter2-".utf8))
        await log.write(Array("password\n".utf8))
        await log.line("Mayfly says hunter2-password")
        await log.write(Array(repeating: UInt8(ascii: "x"), count: 2000))
        await log.write(Array("more".utf8))
        await log.finish()
        let text = await sink.text
        #expect(text.hasPrefix("pass=[MASKED]\nMayfly says [MASKED]\n"))
        #expect(!text.contains("hunter2"))
        #expect(text.contains("Job's log exceeded limit of 1024 bytes."))
        #expect(text.hasSuffix("x" + String(decoding: JobLog.limitNotice(1024), as: UTF8.self)), "nothing after the notice")
        #expect(await log.size == 1024, "the log, notice included, fills the limit exactly")
        #expect(text.utf8.count == 1024)
    }

    @Test("job output is made valid UTF-8 as it streams: split characters pass whole, invalid bytes become U+FFFD")
    func utf8Repair() async {
        let text = Array("a€b😀c é".utf8)
        for cut in 0...text.count {
            var repair = UTF8Repair()
            let output = repair.repair(Array(text[..<cut])) + repair.repair(Array(text[cut...])) + repair.finish()
            #expect(output == text, "cut at \(cut)")
        }
        var repair = UTF8Repair()
        let invalid = repair.repair([0x61, 0xFF, 0x62, 0xED, 0xA0, 0x80, 0x63]) + repair.repair([0xE2, 0x82]) + repair.finish()
        let replaced = String(decoding: invalid, as: UTF8.self)
        #expect(replaced.hasPrefix("a\u{FFFD}b") && replaced.contains("c"))
        #expect(replaced.hasSuffix("\u{FFFD}"), "an unfinished character at the end is replaced at finish: \(replaced)")
        #expect(String(validating: invalid, as: UTF8.self) != nil)

        let sink = CollectingSink()
        let log = JobLog(sink: sink, maskedValues: [], limit: .kibibytes(4))
        await log.write([0xE2, 0x82])
        await log.write([0xAC, 0x0A, 0xC3])
        await log.write([0x28])
        await log.finish()
        #expect(await sink.text == "€\n\u{FFFD}(")
    }

    @Test("the limit never cuts a UTF-8 character in two")
    func limitKeepsCharactersWhole() async {
        let notice = JobLog.limitNotice(1024).count
        for shift in 0..<4 {
            let sink = CollectingSink()
            let log = JobLog(sink: sink, maskedValues: [], limit: .kibibytes(1))
            await log.write(Array(repeating: UInt8(ascii: "a"), count: shift))
            await log.write(Array(String(repeating: "€", count: 1000).utf8))  // 3 bytes each
            let bytes = await sink.bytes
            #expect(bytes.count <= 1024)
            let body = Array(bytes.dropLast(notice))
            #expect(String(validating: body, as: UTF8.self) != nil, "shift \(shift): the cut split a character")
            #expect(body.count > 1024 - notice - 3)
        }
    }
}

@Suite("Guest scripts and job files")
struct GuestScriptTests {
    @Test("values are single-quoted so that nothing in them is special to the shell")
    func quoting() throws {
        #expect(GuestScript.quote("plain") == "'plain'")
        #expect(GuestScript.quote("it's") == "'it'\\''s'")
        let script = GuestScript(
            lines: ["echo \"$A\""],
            variables: [JobVariable(name: "A", value: "x'y"), JobVariable(name: "F", value: "data", file: true)],
            workingDirectory: "/builds/a b")
        let text = try script.render()
        #expect(text.contains("export A='x'\\''y'\n"))
        #expect(text.contains("printf '%s' 'data' > \"$MAYFLY_TMP/F\"\nexport F=\"$MAYFLY_TMP/F\"\n"))
        #expect(text.contains("cd '/builds/a b'"))
        #expect(text.contains("set -e\n"))
        #expect(throws: GuestScript.InvalidVariable.self) {
            try GuestScript(lines: [], variables: [JobVariable(name: "1BAD", value: "")], workingDirectory: "/").render()
        }
    }

    @Test("the script's status trailer is found; its absence means the connection failed")
    func trailer() {
        #expect(GuestScript.status(fromStandardError: "warning\nmayfly-script-status=7\n") == 7)
        #expect(GuestScript.status(fromStandardError: "Connection closed by 127.0.0.1 port 2222\n") == nil)
    }

    @Test("a job file is read with its variables; mistakes point at their line and column")
    func jobFile() throws {
        let job = try JobFile.parse(
            """
            script: [ "uname -a", "echo $GREETING" ]
            after_script: echo done
            variables:
              GREETING: hello ${WHO}
              SECRET: { value: s3cr3t-value, masked: true }
              CONFIG: { value: "a: b", file: true }
            timeout: 10m
            bundle: tiny
            """, file: "job.yml", id: "1", environment: ["WHO": "world"])
        #expect(job.script == ["uname -a", "echo $GREETING"])
        #expect(job.afterScript == ["echo done"])
        #expect(
            job.variables == [
                JobVariable(name: "GREETING", value: "hello world"),
                JobVariable(name: "SECRET", value: "s3cr3t-value", masked: true),
                JobVariable(name: "CONFIG", value: "a: b", file: true),
            ])
        #expect(job.maskedValues == ["s3cr3t-value"])
        #expect(job.timeout == .seconds(600))
        #expect(job.bundle == "tiny")

        let cases: [(String, Int, Int, String)] = [
            ("after_script: [x]\n", 1, 1, "missing required key 'script'"),
            ("script: []\n", 1, 9, "at least one line"),
            ("script: x\ntimeout: forever\n", 2, 10, "not a duration"),
            ("script: x\nvariables: { 9LIVES: x }\n", 2, 14, "not a variable name"),
            ("script: x\nvariables: { A: { value: x, maskd: true } }\n", 2, 29, "did you mean 'masked'?"),
            ("script: x\nworking_directory: builds\n", 2, 20, "absolute path"),
            ("scrpit: x\n", 1, 1, "did you mean 'script'?"),
        ]
        for (text, line, column, words) in cases {
            let error = #expect(throws: ConfigurationError.self) { try JobFile.parse(text, file: "job.yml", id: "1") }
            #expect(error?.line == line && error?.column == column, "\(String(describing: error))")
            #expect(error?.message.contains(words) == true, "\(String(describing: error))")
        }
    }
}
