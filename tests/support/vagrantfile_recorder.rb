# Evaluates a Vagrantfile without Vagrant and prints, as JSON lines, every
# setting it makes: {"path": [...], "args": [...]} for `config.vm.box = "x"`
# is {"path": ["vm", "box="], "args": ["x"]}; a provider block's settings sit
# under ["vm", "provider", NAME]. Plugins are absent (Vagrant.has_plugin? is
# false), as on a host with only Debian's vagrant package.
#
#   ruby vagrantfile_recorder.rb VAGRANTFILE
require "json"

class SettingRecorder < BasicObject
  def initialize(path, log)
    @path = path
    @log = log
  end

  def method_missing(name, *args, **options, &block)
    args = args + [options] unless options.empty?
    scoped = @path + [name.to_s] + (block ? args.map(&:to_s) : [])
    unless block || args.empty?
      @log << { "path" => scoped, "args" => args.map { |a| ::Symbol === a ? a.to_s : a } }
    end
    child = ::SettingRecorder.new(scoped, @log)
    block&.call(child)
    child
  end

  def respond_to_missing?(*)
    true
  end
end

module Vagrant
  LOG = []

  def self.configure(_version)
    yield SettingRecorder.new([], LOG)
  end

  def self.has_plugin?(_name)
    false
  end
end

load ARGV.fetch(0)
Vagrant::LOG.each { |entry| puts JSON.generate(entry) }
